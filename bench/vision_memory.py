"""Per-rank peak memory and tokens/s of a video SFT step under SP, and the longest video that fits.

    python bench/vision_memory.py [--frames 64 128 256] [--sp 1 2 4] [--cap-mib 3072]
                                  [--trainable-frames 64] [--videos 4]

The model is a tiny Qwen2.5-VL from transformers' config class (`make_tiny_vision_model`): language
model hidden 256, 4 layers, 8 query / 4 KV heads; vision tower hidden 128, 2 blocks (one windowed,
one full-attention), merged to the language model's width. One row: a question about one generated
mp4 (noise frames, 224 x 224, written at 2 fps and sampled at `video_fps` 2, so seconds = frames /
2; `video_maxlen` raised so no frame is dropped), encoded by the real data path (the `qwen2_vl`
template, placeholders expanded as LLaMA-Factory does). Each frame pair is one temporal patch of
16 x 16 patches, merged 2 x 2: 32 visual tokens per frame. Every rank builds its batch with the
trainer's collators (`VisionCollator`, then `SequenceParallelCollator` for SP > 1, ulysses) and runs
forward + backward with the hooked vision inputs and the default memory stack of a training run
(gradient checkpointing, memory-efficient RMSNorm, the summed tiled loss head). Full fine-tuning
with LLaMA-Factory's default freezing: `freeze_vision_tower` and `freeze_multi_modal_projector` on
(the frozen tower runs without checkpointing or backward; the first run of this bench found it
checkpointed and back-propagated, fixed in `models/checkpointing.py`). The last table trains the
tower and projector too (both keys false).

Memory is the RSS high-water mark of the timed steps (`/proc/self/clear_refs` reset after a
warm-up step; glibc's mmap threshold pinned so freed tensors leave the resident set): "step" is
above the post-warm-up baseline (weights, gradients, the batch's pixels), "process" is the whole
process (Python and torch included; no optimizer state). Time is the mean of `--repeats` steps;
tokens/s = the whole sequence's tokens / the slowest rank's step time.

Where the vision tower's memory goes: images and each video's temporal groups (pairs of frames) are
shared over the SP ranks (`parallel.work_split`), so even ONE video per batch is encoded by every
rank, each for its own frames (each rank decodes only those). The tables give the ranks that encode
and the others apart (with one video split over all ranks, there are no others). The last table
(trainable tower, `--trainable-frames`) also puts `--videos` shorter videos with the same total
frames in one row.

The longest video under `--cap-mib` per rank is extrapolated as `bench/peer_alst.py` (docs/memory.md)
does: on the slope between the two longest measured points (process peak of the worst rank
against frames), from the longest point, rounded down to an even frame count. Prints tables;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)
from tests.media_fixtures import write_video  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import pin_malloc, reset_rss_peak, rss_kib  # noqa: E402

FRAME = 224  # frame side in pixels: 16 x 16 patches of 14, 64 merged tokens per frame pair
VIDEO_FPS = 2
TEXT = {
    "hidden_size": 256,
    "num_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
}
VISION = {"hidden_size": 128, "intermediate_size": 256, "num_heads": 2}


def _write_model(folder: Path) -> Path:
    """The tiny Qwen2.5-VL's folder (tokenizer, processors at a fixed frame size, config with the
    wider vision tower); ranks build the model from its config."""
    from ulysses_pro.models.multimodal.tiny import make_tiny_vision_model

    model = make_tiny_vision_model(
        "qwen2_5_vl",
        folder,
        video_pixels=(FRAME * FRAME, FRAME * FRAME),
        max_position_embeddings=131072,
        **TEXT,
    )
    config = json.loads((model / "config.json").read_text())
    config["vision_config"].update(VISION)
    (model / "config.json").write_text(json.dumps(config, indent=2))
    return model


def _rows(root: Path, model: Path, videos: list[int]):
    """One SFT row with one `<video>` per entry of `videos` (its frame count), through the real data
    path; and the vision settings the collator reads pixels with."""
    from ulysses_pro.config import load_config
    from ulysses_pro.data.multimodal.rows import vision_settings
    from ulysses_pro.data.pipeline import build_datasets
    from ulysses_pro.models.loader import load_tokenizer

    folder = Path(tempfile.mkdtemp(dir=root))
    names = []
    for index, frames in enumerate(videos):
        write_video(
            folder / f"clip{index}.mp4", frames=frames, fps=VIDEO_FPS, size=(FRAME, FRAME), seed=index
        )
        names.append(f"clip{index}.mp4")
    turns = [
        {"role": "user", "content": "<video>" * len(videos) + "What happens in the video?"},
        {"role": "assistant", "content": "Coloured dots flicker on every frame."},
    ]
    (folder / "clips.json").write_text(json.dumps([{"messages": turns, "videos": names}]))
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    info = {
        "file_name": "clips.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "videos": "videos"},
    }
    (folder / "dataset_info.json").write_text(json.dumps({"clips": {**info, "tags": tags}}))
    config = load_config(
        {
            "model_name_or_path": str(model),
            "template": "qwen2_vl",
            "dataset": "clips",
            "dataset_dir": str(folder),
            "stage": "sft",
            "do_train": True,
            "cutoff_len": 1 << 20,
            "video_fps": VIDEO_FPS,
            "video_maxlen": 1 << 20,
            "output_dir": str(folder / "out"),
        }
    )
    tokenizer = load_tokenizer(config.model)
    row = dict(build_datasets(config.data, tokenizer, "sft").train[0])
    return row, vision_settings(config.data, tokenizer), tokenizer.pad_token_id


def _step(rank, world, model_dir, row, settings, pad_token_id, repeats, train_vision):
    from transformers import AutoConfig, AutoModelForImageTextToText

    from ulysses_pro.config.args import FinetuningArguments, MemoryArguments, ModelArguments
    from ulysses_pro.data.collators import PaddingCollator
    from ulysses_pro.data.multimodal.collator import VisionCollator
    from ulysses_pro.models.attention import apply_sequence_parallel
    from ulysses_pro.models.memory import token_loss_head
    from ulysses_pro.models.memory_stack import apply_memory_stack
    from ulysses_pro.models.multimodal.freezing import freeze_parts
    from ulysses_pro.models.multimodal.rope import MRopePositions
    from ulysses_pro.models.multimodal.vision_inputs import install_vision_inputs
    from ulysses_pro.parallel import SequenceParallelCollator, init_sequence_parallel

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    frozen = not train_vision
    freeze_parts(model, FinetuningArguments(freeze_vision_tower=frozen, freeze_multi_modal_projector=frozen))
    head = apply_memory_stack(model, ModelArguments(), MemoryArguments(), training=True)
    layout = None
    if world > 1:
        layout = init_sequence_parallel(
            world, "ulysses", num_heads=TEXT["num_attention_heads"], num_kv_heads=TEXT["num_key_value_heads"]
        )
        apply_sequence_parallel(model, layout)
    install_vision_inputs(model, layout)
    collate = VisionCollator(
        PaddingCollator(pad_token_id),
        settings.pixel_reader(),
        MRopePositions(model.config),
        model.config.image_token_id,
        model.config.video_token_id,
        share=(layout.sp_rank, layout.sp_size) if layout is not None else (0, 1),
    )
    if layout is not None:
        collate = SequenceParallelCollator(collate, pad_token_id, layout)
    batch = collate([row])
    labels = batch.pop("shift_labels")
    encodes = batch["pixel_values_videos"].shape[0] > 0

    def step():
        with token_loss_head(model, labels, head_options=head, reduction="sum"):
            loss = model(**batch, use_cache=False).logits
        loss.backward()

    step()  # warm-up: gradients exist from here on, so the baseline includes them
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    baseline = rss_kib("VmRSS")
    reset_rss_peak()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - started) / repeats
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    top = rss_kib("VmHWM")
    return {"step": (top - baseline) / 1024, "process": top / 1024, "seconds": seconds, "encodes": encodes}


def measure(
    model: Path, root: Path, videos: list[int], sp: int, repeats: int, train_vision: bool = False
) -> dict:
    row, settings, pad = _rows(root, model, videos)
    results = run_ranks(_step, sp, str(model), row, settings, pad, repeats, train_vision, timeout=1800)
    encoding = [r for r in results if r["encodes"]]
    others = [r for r in results if not r["encodes"]]
    seconds = max(r["seconds"] for r in results)
    return {
        "tokens": len(row["input_ids"]),
        "encoding_step": max(r["step"] for r in encoding),
        "other_step": max((r["step"] for r in others), default=None),
        "process": max(r["process"] for r in results),
        "other_process": max((r["process"] for r in others), default=None),
        "seconds": seconds,
        "tokens_per_s": len(row["input_ids"]) / seconds,
    }


HEADER = (
    "| frames | video s | tokens | SP | step MiB, encoding rank | step MiB, other ranks | vs SP=1 (worst) "
    "| process MiB (worst rank) | step s | tokens/s |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _line(frames: str, m: dict, sp: int, base: float) -> str:
    other = f"{m['other_step']:.0f}" if m["other_step"] is not None else "-"
    worst = max(m["encoding_step"], m["other_step"] or 0)
    return (
        f"| {frames} | {sum(map(int, frames.split(' + '))) / VIDEO_FPS:g} | {m['tokens']} | {sp} | "
        f"{m['encoding_step']:.0f} | {other} | {worst / base:.2f} | {m['process']:.0f} | {m['seconds']:.2f} | "
        f"{m['tokens_per_s']:.0f} |"
    )


def _sweep_line(frames: list[int], m: dict, sp: int, base: dict, key) -> str:
    worst = max(m["encoding_step"], m["other_step"] or 0)
    base.setdefault(key, worst)
    return _line(" + ".join(map(str, frames)), m, sp, base[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 128, 256], help="even frame counts")
    parser.add_argument("--sp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cap-mib", type=float, default=3072.0)
    parser.add_argument(
        "--trainable-frames",
        type=int,
        default=64,
        help="last table's total frames, tower trainable (0: skip)",
    )
    parser.add_argument(
        "--videos", type=int, default=4, help="last table: also this many videos of those frames"
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pin_malloc()
    frames = sorted(args.frames)
    started = time.perf_counter()
    print(
        f"# one video SFT step (forward + backward), tiny Qwen2.5-VL: LM hidden {TEXT['hidden_size']} x "
        f"{TEXT['num_layers']} layers, {TEXT['num_attention_heads']}/{TEXT['num_key_value_heads']} heads; vision "
        f"hidden {VISION['hidden_size']} x 2 blocks; {FRAME}x{FRAME} frames at video_fps {VIDEO_FPS} "
        "(32 tokens per frame); full fine-tuning, gradient checkpointing, ulysses; CPU (gloo)"
    )
    print(
        "# memory: RSS high-water, MiB; step = above the post-warm-up baseline, process = whole process; "
        "one video per batch, its frame pairs shared over the ranks"
    )
    print("\n# vision tower and projector frozen (LLaMA-Factory's default)")
    print(HEADER)
    points: dict[int, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = _write_model(root / "model")
        base: dict = {}
        for count in frames:
            for sp in args.sp:
                m = points.setdefault(sp, {})[count] = measure(model, root, [count], sp, args.repeats)
                print(_sweep_line([count], m, sp, base, count), flush=True)
        if len(frames) >= 2:
            top, below = frames[-1], frames[-2]
            print(
                f"\n# longest video under {args.cap_mib:.0f} MiB per rank (process peak, worst rank), extrapolated "
                f"on the slope between {below} and {top} frames (as bench/peer_alst.py); tower frozen"
            )
            print(
                "| SP | slope MiB/frame, worst rank | slope, ranks without the video | longest video: frames "
                "| seconds at video_fps 2 | tokens |\n|---|---|---|---|---|---|"
            )
            for sp, rows in points.items():
                slope = (rows[top]["process"] - rows[below]["process"]) / (top - below)
                longest = top + (args.cap_mib - rows[top]["process"]) / slope if slope > 0 else math.inf
                longest = int(longest // 2 * 2) if math.isfinite(longest) else longest
                per_frame = (rows[top]["tokens"] - rows[below]["tokens"]) / (top - below)
                tokens = rows[top]["tokens"] + per_frame * (longest - top)
                other = "-"
                if rows[top]["other_process"] is not None:
                    other = (
                        f"{(rows[top]['other_process'] - rows[below]['other_process']) / (top - below):.2f}"
                    )
                print(
                    f"| {sp} | {slope:.2f} | {other} | {longest} | {longest / VIDEO_FPS:g} | {tokens:.0f} |",
                    flush=True,
                )
        if args.trainable_frames:
            split = [args.trainable_frames // args.videos // 2 * 2] * args.videos if args.videos > 1 else []
            print(
                "\n# vision tower and projector trainable (freeze_vision_tower / freeze_multi_modal_projector false); "
                f"one video, then {args.videos} videos with the same total frames (the encoder's items split over "
                "the ranks; 'encoding rank' is the worst of the ranks that encode)"
            )
            print(HEADER)
            base = {}
            for videos in ([args.trainable_frames], split):
                for sp in args.sp if videos else []:
                    if len(videos) > 1 and sp == 1:
                        continue  # one rank encodes everything: the one-video row above
                    m = measure(model, root, videos, sp, args.repeats, train_vision=True)
                    print(_sweep_line(videos, m, sp, base, "trainable"), flush=True)
    print(f"\n# wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Per-rank peak memory and step time of one model under DDP, DeepSpeed ZeRO-3 and FSDP2 (with and
without offload), at SP=1 and SP=2 on 4 processes, with the planner's prediction beside each.

    python bench/engines_memory.py [--hidden 512] [--layers 6] [--length 1024] [--steps 4]

Each cell trains the real `pt` stage (`run_stage`, packed 1024-token blocks of data/demo_text,
full fine-tuning, AdamW, gradient checkpointing on) for `--steps` optimizer steps, global batch 4
rows: at SP=1 each of the 4 ranks takes one row, at SP=2 each DP pair of ranks takes two rows in
turn (per-device batch 2, two SP groups). Memory is each rank's resident-set high-water mark from
the start of training (reset at `on_train_begin`) above the resident set before the model was
built, the largest over the ranks: static state (weights, gradients, optimizer) plus activations,
without the load-time transient of the whole model that FSDP2 shards afterwards. Allocations are
mmap-served (`pin_malloc`), so freed tensors leave the resident set. Time is the mean step after
the first. The planner column is `ulysses-pro plan`'s per-rank peak for the same config and
layout (tensor bytes, as a GPU allocator counts them: no interpreter or library overhead). Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)
from tests.train.harness import ZERO3  # noqa: E402  (the ZeRO-3 config the tests use)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import MIB, pin_malloc, reset_rss_peak, rss_kib  # noqa: E402

DATA = str(Path(__file__).resolve().parent.parent / "data")
ENGINES = ["DDP", "ZeRO-3", "FSDP2", "FSDP2 + offload"]


def _engine_keys(engine: str, scratch: Path) -> dict:
    if engine == "ZeRO-3":
        config = scratch / "zero3.json"
        config.write_text(json.dumps(ZERO3))
        return {"deepspeed": str(config)}
    if engine == "FSDP2":
        return {"fsdp": "full_shard"}
    if engine == "FSDP2 + offload":
        return {"fsdp": "full_shard offload"}
    return {}


def _keys(model: str, engine: str, sp: int, length: int, steps: int, scratch: Path) -> dict:
    return {
        "model_name_or_path": model,
        "stage": "pt",
        "dataset": "demo_text",
        "dataset_dir": DATA,
        "cutoff_len": length,
        "finetuning_type": "full",
        "max_steps": steps,
        "per_device_train_batch_size": sp,
        "sequence_parallel_size": sp,
        "output_dir": str(scratch / f"{engine}-{sp}".replace(" ", "")),
        **_engine_keys(engine, scratch),
    }


def _rank(rank: int, world_size: int, keys: dict) -> tuple[float, float]:
    from transformers import TrainerCallback

    from tests.train.harness import run_training

    class Measure(TrainerCallback):
        started: float | None = None
        durations: list[float] = []
        peak_kib = 0

        def on_train_begin(self, args, state, control, **kwargs):
            reset_rss_peak()

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self.started)

        def on_train_end(self, args, state, control, **kwargs):
            self.peak_kib = rss_kib("VmHWM")

    measure = Measure()
    baseline = rss_kib()
    run_training(callbacks=(measure,), **keys)
    later = measure.durations[1:] or measure.durations
    # The planner reads the config as the run does (on every rank: ZeRO-3's config starts collectives).
    planned = _planned(keys, keys["sequence_parallel_size"], keys["cutoff_len"])
    return (measure.peak_kib - baseline) * 1024 / MIB, sum(later) / len(later), planned


def _planned(keys: dict, sp: int, length: int) -> float:
    from ulysses_pro.config import load_config
    from ulysses_pro.planner import Layout, trace
    from ulysses_pro.planner.estimate import options_of

    config = load_config(keys)
    layout = Layout(ulysses=sp) if sp > 1 else Layout()
    return trace(config, layout, length, options_of(config), world=4, device="cpu").peak / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--engines", nargs="*", default=ENGINES, help=f"of {ENGINES}")
    options = parser.parse_args()
    pin_malloc()
    model = (
        f"tiny:llama?hidden_size={options.hidden}&num_layers={options.layers}&num_heads=8&num_kv_heads=4"
        f"&max_position_embeddings={4 * options.length}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for engine in options.engines:
            for sp in (1, 2):
                keys = _keys(model, engine, sp, options.length, options.steps, scratch)
                started = time.perf_counter()
                results = run_ranks(_rank, 4, keys)
                planned = results[0][2]
                peak = max(memory for memory, _, _ in results)
                step = max(seconds for _, seconds, _ in results)
                rows.append((engine, sp, peak, step, planned))
                print(
                    f"{engine} SP={sp}: {peak:.0f} MiB, {step:.2f} s/step, planner {planned:.0f} MiB "
                    f"({time.perf_counter() - started:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"\nLlama-shaped, hidden {options.hidden}, {options.layers} layers, {options.length} tokens per row, "
        "4 processes, full fine-tuning, AdamW, fp32, CPU\n"
    )
    print(
        "| engine | SP | peak MiB / rank (RSS above the pre-load baseline) | s / step | planner MiB / rank |"
    )
    print("|---|---|---|---|---|")
    for engine, sp, peak, step, planned in rows:
        print(f"| {engine} | {sp} | {peak:.0f} | {step:.2f} | {planned:.0f} |")


if __name__ == "__main__":
    main()

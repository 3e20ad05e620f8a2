"""`ulysses-pro plan`'s per-rank peak against the peak measured in real training, on the CPU.

    python bench/planner_accuracy.py [--length 16384]

Each configuration trains two optimizer steps through the real path (config -> data -> model ->
trainer, `stage: pt`, one sequence of L tokens, full fine-tuning, AdamW, `loss_chunk_tokens: 128`
so that activations rather than the logits chunk set the peak) on 1, 2 or 4 gloo processes. Measured: the live tensor bytes of the second step on the worst rank (every storage the
step's ops create, forward, backward and optimizer, plus the weights and optimizer state it starts
with and DDP's gradient buckets), i.e. what a CUDA allocator would report as
`max_memory_allocated`; the RSS high-water mark is shown beside it. Predicted: the planner's meta
trace of the same config. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import LiveTensorBytes, pin_malloc, reset_rss_peak, rss_peak_mib, storage_bytes  # noqa: E402
from peer_alst import MODEL, _text_of_exactly  # noqa: E402

from tests.launcher import run_ranks  # noqa: E402

CONFIGS = [
    # (processes, SP mode, extra keys)
    (1, "ulysses", {}),
    (1, "ulysses", {"disable_gradient_checkpointing": True, "tiled_mlp": False}),
    (2, "ulysses", {}),
    (2, "ulysses", {"tiled_mlp": False}),
    (2, "zigzag-ring", {"disable_gradient_checkpointing": True}),
    (4, "ulysses", {}),
    (4, "hybrid", {"tiled_mlp": False, "ulysses_degree": 2}),
    (2, "ulysses", {"finetuning_type": "lora", "tiled_mlp": False}),
]


def _keys(folder: Path, length: int, world: int, mode: str, extra: dict) -> dict:
    spec = "tiny:llama?" + "&".join(
        f"{k}={v}" for k, v in {**MODEL, "max_position_embeddings": 2 * length}.items()
    )
    keys = {
        "model_name_or_path": spec,
        "stage": "pt",
        "finetuning_type": "full",
        "dataset": "long",
        "dataset_dir": str(folder),
        "cutoff_len": length,
        "packing": True,
        "do_train": True,
        "max_steps": 2,
        "per_device_train_batch_size": 1,
        "learning_rate": 1e-5,
        "tiled_mlp": True,
        "tiled_mlp_tile_tokens": 1024,
        # Small loss chunks, so that activations (what the options change) set the peak, not the logits.
        "loss_chunk_tokens": 128,
        "output_dir": str(folder / "out"),
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "overwrite_output_dir": True,
    }
    if world > 1:
        keys.update(sequence_parallel_size=world, sequence_parallel_mode=mode)
    keys.update(extra)
    return keys


def _write_data(folder: Path, length: int) -> None:
    (folder / "long.json").write_text(json.dumps([{"text": _text_of_exactly(length)}]))
    (folder / "dataset_info.json").write_text(
        json.dumps({"long": {"file_name": "long.json", "columns": {"prompt": "text"}}})
    )


def _measure(rank, world, keys: dict) -> dict:
    from transformers import TrainerCallback

    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    class SecondStep(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if state.global_step != 1:
                return
            states = [
                t
                for s in optimizer.state.values()
                for t in s.values()
                if isinstance(t, __import__("torch").Tensor)
            ]
            baseline = storage_bytes([*model.parameters(), *model.buffers(), *states])
            self.buckets = _ddp_bucket_bytes(model)
            self.live = LiveTensorBytes(baseline=baseline)
            reset_rss_peak()
            self.live.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                self.live.__exit__(None, None, None)
                self.result = {"live": self.live.peak + self.buckets, "rss_mib": rss_peak_mib()}

    probe = SecondStep()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        run_stage(load_config(keys), callbacks=[probe])
    return probe.result


def _ddp_bucket_bytes(model) -> int:
    """DDP's flat gradient buckets (allocated before the step, so the live counter cannot see them)."""
    wrapped = getattr(model, "module", None)
    if wrapped is None or not hasattr(model, "_get_ddp_logging_data"):
        return 0
    data = model._get_ddp_logging_data()
    sizes = data.get("bucket_sizes", "")
    return sum(int(s) for s in str(sizes).split(",") if s.strip().isdigit())


def predict(keys: dict, world: int) -> int:
    from ulysses_pro.config import load_config
    from ulysses_pro.planner.estimate import options_of, trace
    from ulysses_pro.planner.report import _heads, _layouts

    config = load_config(keys)
    layout = _layouts(world, config, _heads(config))
    return trace(config, layout, config.data.cutoff_len, options_of(config), world=world, device="cpu").peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16384)
    args = parser.parse_args()
    pin_malloc()
    print(f"# L={args.length}, Llama h256 x 4 layers, 8/2 heads, vocab 32k, fp32 AdamW, batch 1; CPU (gloo)")
    print(
        "| processes = SP | mode | options | predicted MiB | measured MiB (live tensors) | error | RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    errors = []
    for world, mode, extra in CONFIGS:
        with tempfile.TemporaryDirectory() as folder:
            _write_data(Path(folder), args.length)
            keys = _keys(Path(folder), args.length, world, mode, extra)
            results = run_ranks(_measure, world, keys, timeout=3600)
            measured = max(r["live"] for r in results)
            rss = max(r["rss_mib"] for r in results)
            predicted = predict(keys, world)
        error = predicted / measured - 1
        errors.append(abs(error))
        options = ", ".join(f"{k}={v}" for k, v in extra.items()) or "defaults (checkpointing, tiled MLP)"
        print(
            f"| {world} | {mode} | {options} | {predicted / 2**20:.0f} | {measured / 2**20:.0f} | {error:+.1%} | {rss:.0f} |",
            flush=True,
        )
    print(f"\nlargest |error|: {max(errors):.1%} over {len(errors)} configurations")


if __name__ == "__main__":
    main()

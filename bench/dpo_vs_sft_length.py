"""The longest sequence DPO trains at, divided by SFT's, under the same per-process memory cap.

    python bench/dpo_vs_sft_length.py [--cap-mib 1200] [--finetuning lora] [--hidden 256] [--layers 4]

Each measurement is one fresh process running the real path (config -> data -> model -> trainer)
for two optimizer steps on one row of exactly L tokens per sequence (SFT: one conversation; DPO:
a chosen and a rejected answer to one prompt, both L tokens, plus the reference forward). The
memory is the process's resident-set high-water mark during the second step (`/proc/self/status`
VmHWM after a reset through `/proc/self/clear_refs`): weights, optimizer state, the reference
copy (full fine-tuning) and the step's activations all count, as they would against a GPU's
memory. The longest L under the cap is found by doubling, then bisection to `--granularity`.
Prints a table; asserts nothing.
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
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import second_step_peak  # noqa: E402

VARIANTS = {
    "sft": {"stage": "sft"},
    "dpo": {"stage": "dpo"},
    "dpo split": {"stage": "dpo", "pref_split_backward": True},
}


def _write_data(folder: Path, length: int) -> None:
    """One row whose prompt and answers are each longer than `length` tokens (truncation makes them L)."""
    words = " ".join(str(i % 997) for i in range(length))
    other = " ".join(str((7 * i) % 991) for i in range(length))
    (folder / "sft.json").write_text(json.dumps([{"instruction": words, "output": other}]))
    (folder / "pairs.json").write_text(
        json.dumps([{"instruction": words, "chosen": other, "rejected": words}])
    )
    info = {
        "sft": {"file_name": "sft.json"},
        "pairs": {"file_name": "pairs.json", "ranking": True, "columns": {"prompt": "instruction"}},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info))


def _measure(rank, world, variant: str, length: int, options: dict) -> dict:
    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    with tempfile.TemporaryDirectory() as folder:
        _write_data(Path(folder), length)
        keys = {
            **VARIANTS[variant],
            "model_name_or_path": f"tiny:llama?hidden_size={options['hidden']}&num_layers={options['layers']}"
            f"&max_position_embeddings={2 * length}",
            "finetuning_type": options["finetuning"],
            "dataset": "pairs" if variant.startswith("dpo") else "sft",
            "dataset_dir": folder,
            "cutoff_len": length,
            "do_train": True,
            "max_steps": 2,
            "per_device_train_batch_size": 1,
            "learning_rate": 1e-4,
            "output_dir": str(Path(folder) / "out"),
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "logging_steps": 1,
        }
        # Checkpointing is the training default now; this bench measures without it unless asked.
        keys["disable_gradient_checkpointing"] = not options["gradient_checkpointing"]
        probe = second_step_peak()
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # no sample generations
            trainer = run_stage(load_config(keys), callbacks=[probe])
        row = trainer.train_dataset[0]
        tokens = len(row.get("chosen_input_ids", row.get("input_ids")))
    return {"peak_mib": probe.peak_mib, "tokens": tokens}


def peak_at(variant: str, length: int, options: dict) -> dict:
    # A fixed mmap threshold makes glibc return freed large blocks to the OS, so the RSS high-water
    # mark tracks live tensors rather than heap fragmentation (read by each fresh process at start).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    return run_ranks(_measure, 1, variant, length, options, timeout=1800)[0]


def longest_under_cap(variant: str, options: dict, log, measure=None) -> tuple[int, dict]:
    """Largest L (a multiple of the granularity) whose measured peak stays under the cap;
    `measure(variant, length, options) -> {"peak_mib", ...}` defaults to this bench's `peak_at`."""
    measure = measure or peak_at
    cap, step = options["cap_mib"], options["granularity"]
    good, bad, best = 0, None, None
    length = options["start"]
    while bad is None:
        result = measure(variant, length, options)
        log(variant, length, result)
        if result["peak_mib"] <= cap:
            good, best, length = length, result, length * 2
        else:
            bad = length
        if length > options["max_length"]:
            return good, best
    while bad - good > step:
        middle = (good + bad) // 2 // step * step
        result = measure(variant, middle, options)
        log(variant, middle, result)
        if result["peak_mib"] <= cap:
            good, best = middle, result
        else:
            bad = middle
    return good, best


SEARCH_KEYS = ("cap_mib", "hidden", "layers", "start", "granularity", "max_length", "gradient_checkpointing")


def add_search_arguments(parser: argparse.ArgumentParser, cap_help: str) -> None:
    """The memory cap, the model's size and the length search, shared with rl_vs_sft_length.py."""
    parser.add_argument("--cap-mib", type=float, default=1200.0, help=cap_help)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--start", type=int, default=1024)
    parser.add_argument("--granularity", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=131072)
    parser.add_argument("--gradient-checkpointing", action="store_true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_search_arguments(parser, "per-process memory cap (RSS, MiB)")
    parser.add_argument("--finetuning", default="lora", choices=["lora", "full"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    options = {key: getattr(args, key) for key in (*SEARCH_KEYS, "finetuning")}

    def log(variant, length, result):
        print(
            f"  {variant:10s} L={length:6d} ({result['tokens']} tokens): peak {result['peak_mib']:.0f} MiB",
            flush=True,
        )

    print(
        f"# cap {args.cap_mib:.0f} MiB per process; tiny Llama h{args.hidden} x {args.layers} layers, "
        f"{args.finetuning}{', gradient checkpointing' if args.gradient_checkpointing else ''}; CPU"
    )
    found = {variant: longest_under_cap(variant, options, log) for variant in args.variants}
    sft_length = found.get("sft", (None,))[0]
    print("\n| stage | longest L under the cap | peak MiB there | L / SFT's L |")
    print("|---|---|---|---|")
    for variant, (length, result) in found.items():
        ratio = f"{length / sft_length:.2f}" if sft_length else "-"
        peak = f"{result['peak_mib']:.0f}" if result else "-"
        print(f"| {variant} | {length} | {peak} | {ratio} |")


if __name__ == "__main__":
    main()

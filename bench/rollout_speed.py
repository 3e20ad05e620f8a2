"""Rollout throughput of the batched engine against one `generate` per prompt, and a GRPO step's time
with each.

    python bench/rollout_speed.py [--prompts 8] [--generations 8] [--max-new-tokens 64]
                                  [--hidden 64] [--layers 2] [--repeats 5] [--grpo-steps 4]

1. Rollouts: `--prompts` demo-task prompts (chatml, different lengths) x `--generations` completions
   sampled at temperature 1.0 from a seeded tiny Llama (h`--hidden` x `--layers`), each up to
   `--max-new-tokens`, by `rollout_engine: sequential` (one generate per prompt) and `batched` (all
   rows in left-padded calls of `rollout_batch_size`). Tokens/s counts the completion tokens kept
   (cut at stop tokens), best of `--repeats` (the engines take turns within each repeat).
2. A GRPO step through the real path (config -> prompts -> model -> trainer, one process): the same
   prompts per step, a rule reward, full fine-tuning; the median wall time between optimizer steps
   after the first (rollout, scoring and update), with each engine, best of `--grpo-repeats` runs.

CPU timings on a shared machine move by 10-20% from run to run. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.train.harness import run_training  # noqa: E402  (the tests' real-path runner)

DATA = str(REPO / "data")
REWARD = "def varied(prompts, completions, **columns):\n    return [len(set(c)) / 10 for c in completions]\n"


def _model_spec(args) -> str:
    return f"tiny:llama?hidden_size={args.hidden}&num_layers={args.layers}"


def _prompts(args, tokenizer):
    from ulysses_pro.config import load_config
    from ulysses_pro.data.prompts import build_prompt_datasets

    config = load_config(
        {
            "stage": "grpo",
            "model_name_or_path": _model_spec(args),
            "dataset": "demo_tasks",
            "dataset_dir": DATA,
            "template": "chatml",
            "reward_funcs": ["x:y"],
            "cutoff_len": 512,
        }
    )
    bundle = build_prompt_datasets(config.data, tokenizer)
    return [bundle.train[i] for i in range(args.prompts)], bundle.template


def rollout_table(args) -> list[dict]:
    from ulysses_pro.config.args import ModelArguments
    from ulysses_pro.models.loader import load_tokenizer
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.train.rl.engines import SamplingSettings, make_engine
    from ulysses_pro.train.rl.rollout import PolicySampler, roll_out

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=_model_spec(args)))
    prompts, template = _prompts(args, tokenizer)
    model = build_tiny_model("llama", tokenizer, hidden_size=args.hidden, num_layers=args.layers)
    # `bench/gpu_sections/rollouts.py` runs this table on CUDA in bf16.
    model = model.to(getattr(args, "device", "cpu"), getattr(args, "dtype", torch.float32))
    stop_ids = template.stop_token_ids(tokenizer)
    settings = SamplingSettings(do_sample=True, temperature=1.0, max_new_tokens=args.max_new_tokens)
    engines = [("sequential", 1), ("batched", 16), ("batched", 64)]
    samplers = [
        PolicySampler(
            tokenizer,
            stop_ids,
            settings,
            512,
            seed=0,
            dp_rank=0,
            engine=make_engine(name, tokenizer, settings, stop_ids, None, batch_size=batch_size),
        )
        for name, batch_size in engines
    ]
    # Engines take turns within each repeat, so a burst of load elsewhere on the machine hits them
    # alike; the best time of each counts.
    times: list[list[float]] = [[] for _ in engines]
    tokens = [0] * len(engines)
    synchronize = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    for repeat in range(args.repeats):
        for i, sampler in enumerate(samplers):
            synchronize()
            start = time.perf_counter()
            rollouts = roll_out(sampler, model, prompts, args.generations, step=repeat)
            synchronize()
            times[i].append(time.perf_counter() - start)
            tokens[i] = sum(len(r.completion_ids) for r in rollouts)
    rows = []
    for (name, batch_size), seconds, count in zip(engines, times, tokens):
        calls = len(prompts) if name == "sequential" else -(-len(prompts) * args.generations // batch_size)
        rows.append(
            {
                "engine": name if name == "sequential" else f"batched ({batch_size})",
                "calls": calls,
                "seconds": min(seconds),
                "tokens": count,
                "tokens_per_s": count / min(seconds),
            }
        )
    return rows


class StepClock(TrainerCallback):
    """Wall time at every optimizer step's end."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def grpo_step_seconds(args, engine: str) -> float:
    clock = StepClock()
    with tempfile.TemporaryDirectory() as scratch:
        rewards = Path(scratch, "rewards.py")
        rewards.write_text(REWARD)
        keys = {
            "stage": "grpo",
            "model_name_or_path": _model_spec(args),
            "dataset": "demo_tasks",
            "dataset_dir": DATA,
            "template": "chatml",
            "cutoff_len": 512,
            "max_samples": args.prompts * (args.grpo_steps + 1),
            "max_steps": args.grpo_steps,
            "per_device_train_batch_size": args.prompts,
            "num_generations": args.generations,
            "reward_funcs": [f"{rewards}:varied"],
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "max_new_tokens": args.max_new_tokens,
            "rollout_engine": engine,
            "output_dir": str(Path(scratch, "out")),
        }
        with (
            open(os.devnull, "w") as quiet,
            contextlib.redirect_stdout(quiet),
            contextlib.redirect_stderr(quiet),
        ):
            run_training(callbacks=(clock,), **keys)
    steps = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    return statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    # The tests' tiny Llama by default; --hidden 256 --layers 4 is compute-bound on a few CPU threads.
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grpo-repeats", type=int, default=2)
    parser.add_argument("--grpo-steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"# {args.prompts} prompts x {args.generations} completions, up to {args.max_new_tokens} new tokens, "
        f"temperature 1.0; tiny Llama h{args.hidden} x {args.layers} layers, fp32; CPU, "
        f"{torch.get_num_threads()} threads"
    )
    rows = rollout_table(args)
    base = rows[0]["tokens_per_s"]
    print("\n| engine | generate calls | seconds | completion tokens | tokens/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['engine']} | {row['calls']} | {row['seconds']:.2f} | {row['tokens']} | "
            f"{row['tokens_per_s']:.0f} | {row['tokens_per_s'] / base:.1f}x |"
        )
    print(
        f"\n# GRPO step (median of steps 2..{args.grpo_steps}, rollout + scoring + update; best of "
        f"{args.grpo_repeats} runs)"
    )
    print("\n| rollout_engine | seconds per step | speed-up |")
    print("|---|---|---|")
    runs: dict[str, list[float]] = {"sequential": [], "batched": []}
    for _ in range(args.grpo_repeats):  # the engines take turns; the best median counts
        for engine, medians in runs.items():
            medians.append(grpo_step_seconds(args, engine))
    times = {engine: min(medians) for engine, medians in runs.items()}
    for engine, seconds in times.items():
        print(f"| {engine} | {seconds:.2f} | {times['sequential'] / seconds:.1f}x |")


if __name__ == "__main__":
    main()

"""RL rollouts on CUDA: the batched engine against one `generate` per prompt (8 prompts x 8
completions, bf16), and a short GRPO run through the real path with the batched engine."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

from .common import Skip, section


@section("RL rollouts: batched engine against one generate per prompt; GRPO with it")
def check_rollouts(args):
    from rollout_speed import rollout_table

    from tests.train.harness import run_training

    on_gpu = not args.cpu_dry_run
    if on_gpu and not torch.cuda.is_available():
        raise Skip("no CUDA device")
    table_args = argparse.Namespace(
        prompts=8,
        generations=8,
        max_new_tokens=16 if args.cpu_dry_run else 128,
        hidden=64 if args.cpu_dry_run else 1024,
        layers=2 if args.cpu_dry_run else 8,
        repeats=1 if args.cpu_dry_run else 3,
        device="cuda" if on_gpu else "cpu",
        dtype=torch.bfloat16 if on_gpu else torch.float32,
    )
    rows = rollout_table(table_args)
    base = rows[0]["tokens_per_s"]
    table = {
        row["engine"]: {
            "tokens_per_s": round(row["tokens_per_s"]),
            "speed_up": round(row["tokens_per_s"] / base, 1),
        }
        for row in rows
    }
    with tempfile.TemporaryDirectory() as folder:
        rewards = Path(folder, "rewards.py")
        rewards.write_text(
            "def varied(prompts, completions, **columns):\n    return [len(set(c)) / 10 for c in completions]\n"
        )
        result = run_training(
            stage="grpo",
            model_name_or_path=f"tiny:llama?hidden_size={table_args.hidden}&num_layers={table_args.layers}",
            dataset="demo_tasks",
            dataset_dir=str(Path(__file__).resolve().parents[2] / "data"),
            template="chatml",
            cutoff_len=512,
            max_samples=24,
            max_steps=3,
            per_device_train_batch_size=8,
            num_generations=8,
            reward_funcs=[f"{rewards}:varied"],
            temperature=0.7,
            top_p=1.0,
            top_k=0,
            max_new_tokens=table_args.max_new_tokens,
            rollout_engine="batched",
            bf16=on_gpu,
            use_cpu=not on_gpu,
            output_dir=str(Path(folder, "out")),
        )
    losses = result["losses"]
    if len(losses) != 3 or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"GRPO with the batched engine: losses {losses}")
    return {
        "model": f"tiny Llama h{table_args.hidden} x {table_args.layers} layers, {table_args.dtype}",
        f"rollouts (8 x 8, up to {table_args.max_new_tokens} tokens)": table,
        "grpo_batched": {"losses": [round(x, 5) for x in losses], "reward": result["metrics"].get("reward")},
    }

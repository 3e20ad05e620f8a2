"""Ring attention with a sliding window against full causal attention at the same length.

    python bench/window_attention.py [--lengths 8192 16384] [--window-fraction 8] [--repeats 3]

Two gloo processes, SP=2 zigzag ring (and ulysses, for comparison), one sequence of L tokens: the
forward + backward of one attention call over this rank's shard (8 query heads, 4 KV heads, head
dim 64, fp32 on CPU), median of `--repeats` after a warm-up. The window is L / fraction tokens;
with it, ring blocks no query's window reaches are not computed (parallel/plan.py), and the table
shows the pieces each rank computes. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)

HEADS, KV_HEADS, DIM = 8, 4, 64


def _time(rank, world, mode, length, window, repeats):
    from ulysses_pro.parallel import init_sequence_parallel
    from ulysses_pro.parallel.hybrid import sequence_parallel_attention
    from ulysses_pro.parallel.plan import build_attention_plan
    from ulysses_pro.parallel.sharding import shard_indices

    layout = init_sequence_parallel(world, mode, num_heads=HEADS, num_kv_heads=KV_HEADS)
    index = shard_indices(
        length, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
    )
    generator = torch.Generator().manual_seed(rank)
    local = index.numel()
    q = torch.randn(1, HEADS, local, DIM, generator=generator).requires_grad_(True)
    k = torch.randn(1, KV_HEADS, local, DIM, generator=generator).requires_grad_(True)
    v = torch.randn(1, KV_HEADS, local, DIM, generator=generator).requires_grad_(True)
    positions = index[None]
    plan = build_attention_plan(positions, layout, window=window)
    pieces = sum(len(step) for step in plan.steps)
    seconds = []
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        out = sequence_parallel_attention(q, k, v, None, layout, DIM**-0.5, plan=plan)
        out.sum().backward()
        if attempt:
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), pieces


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--window-fraction", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| mode, SP=2 | L | window | s / step (fwd + bwd) | pieces per rank | vs full causal |")
    print("|---|---|---|---|---|---|")
    for mode in ("zigzag-ring", "ulysses"):
        for length in args.lengths:
            window = length // args.window_fraction
            full = run_ranks(_time, 2, mode, length, None, args.repeats, timeout=3600)
            windowed = run_ranks(_time, 2, mode, length, window, args.repeats, timeout=3600)
            full_s = max(seconds for seconds, _ in full)
            windowed_s = max(seconds for seconds, _ in windowed)
            pieces = lambda results: "/".join(str(p) for _, p in results)  # noqa: E731
            print(f"| {mode} | {length} | full causal | {full_s:.2f} | {pieces(full)} | 1.00x |")
            print(
                f"| {mode} | {length} | {window} (L/{args.window_fraction}) | {windowed_s:.2f} | "
                f"{pieces(windowed)} | {windowed_s / full_s:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()

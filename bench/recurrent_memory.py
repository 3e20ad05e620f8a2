"""Per-rank peak memory and step time of a Qwen3.5-shaped hybrid under SP, and what the recurrent
layers' all-to-all costs beside attention's.

    python bench/recurrent_memory.py [--lengths 2048 4096 8192] [--hidden 256]

The model is a tiny Qwen3.5 text decoder built from transformers' own config class: 4 layers, three
Gated DeltaNet layers and one attention layer (Qwen3.5's 3:1 pattern), 8 attention heads / 2 KV
heads, 4 linear-attention key heads / 8 value heads. Every rank runs forward + backward of its
shard of one sequence of L tokens with the memory stack a training run gets by default
(gradient checkpointing, the summed tiled loss head). Memory is the RSS high-water mark above the
post-warm-up baseline on CPU (`/proc/self/clear_refs`), or `torch.cuda.max_memory_allocated` on GPU;
time is the mean of `--repeats` steps; the all-to-all columns sum the time spent inside the
exchanges (forward and backward) of the recurrent layers (over the whole SP group) and of the
attention layer (over the ulysses group). Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import pin_malloc, reset_rss_peak, rss_kib, summed_loss_step  # noqa: E402

SHAPE = {
    "num_heads": 8,
    "num_kv_heads": 2,
    "num_layers": 4,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 8,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
}


def _timed_exchanges(layout, spent: dict[str, float]) -> None:
    """Time every head/sequence all-to-all, booked to the recurrent layers (the whole SP group) or to
    attention (the ulysses group)."""
    from ulysses_pro.parallel import comm

    def timed(function):
        def run(x, group):
            started = time.perf_counter()
            out = function(x, group)
            kind = (
                "recurrent"
                if group is layout.sp_group and layout.sp_group is not layout.ulysses_group
                else "attention"
            )
            spent[kind] += time.perf_counter() - started
            return out

        return run

    comm._heads_to_sequence = timed(comm._heads_to_sequence)
    comm._sequence_to_heads = timed(comm._sequence_to_heads)


def _step(rank, world, sp_size, length, hidden, repeats):
    from ulysses_pro.config.args import MemoryArguments, ModelArguments
    from ulysses_pro.models.attention import apply_sequence_parallel
    from ulysses_pro.models.memory_stack import apply_memory_stack
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.parallel import init_sequence_parallel, split_for_sequence_parallel

    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    model = build_tiny_model("qwen3_5_text", hidden_size=hidden, max_position_embeddings=2 * length, **SHAPE)
    model = model.to(device).train()
    head = apply_memory_stack(model, ModelArguments(), MemoryArguments(), training=True)
    ids = torch.randint(3, 1000, (1, length), generator=torch.Generator().manual_seed(0))
    batch = {
        "input_ids": ids,
        "shift_labels": torch.roll(ids, -1, 1),
        "position_ids": torch.arange(length)[None],
    }
    spent = {"recurrent": 0.0, "attention": 0.0}
    if sp_size > 1:
        layout = init_sequence_parallel(sp_size, "ulysses", num_heads=SHAPE["num_heads"], num_kv_heads=2)
        apply_sequence_parallel(model, layout)
        _timed_exchanges(layout, spent)
        batch = split_for_sequence_parallel(
            batch, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, 0
        )
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        summed_loss_step(model, head, batch)

    step()  # warm-up: gradients exist from here on, so the baseline includes them
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    baseline = rss_kib("VmRSS") if not torch.cuda.is_available() else 0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_rss_peak()
    spent.update(recurrent=0.0, attention=0.0)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - started) / repeats
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else (rss_kib("VmHWM") - baseline) / 1024
    )
    return peak, seconds, spent["recurrent"] / repeats, spent["attention"] / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pin_malloc()
    print(
        f"# one step (forward + backward) of a Qwen3.5-shaped hybrid: hidden {args.hidden}, 3 Gated DeltaNet + "
        "1 attention layer, gradient checkpointing, ulysses layout"
    )
    memory = (
        "CUDA max allocated"
        if torch.cuda.is_available()
        else "CPU RSS high-water above the post-warm-up baseline"
    )
    print(f"# memory: {memory} (MiB, worst rank); all-to-all: seconds per step inside the exchanges")
    print("| L | SP | peak MiB/rank | vs SP=1 | step s | recurrent all-to-all s | attention all-to-all s |")
    print("|---|---|---|---|---|---|---|")
    for length in args.lengths:
        base = None
        for sp_size in (1, 2, 4):
            results = run_ranks(_step, sp_size, sp_size, length, args.hidden, args.repeats)
            peak = max(r[0] for r in results)
            seconds = max(r[1] for r in results)
            recurrent = max(r[2] for r in results)
            attention = max(r[3] for r in results)
            base = peak if sp_size == 1 else base
            print(
                f"| {length} | {sp_size} | {peak:.1f} | {peak / base:.2f} | {seconds:.2f} | "
                f"{recurrent:.3f} | {attention:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Per-rank peak memory and throughput of one training step under sequence parallelism.

    python bench/sp_memory.py [--lengths 1024 2048 4096] [--hidden 256] [--layers 4]

For SP = 1, 2, 4 and each mode, every rank runs forward + backward of one sequence of L tokens
(its shard of it) through a tiny Llama with the memory stack a training run gets by default
(gradient checkpointing, memory-efficient RMSNorm, the summed tiled loss head; `--no-checkpointing`
turns checkpointing off, `--tiled-mlp` adds the tiled MLP). Memory is the RSS high-water mark
on CPU (`/proc/self/status` VmHWM, reset through `/proc/self/clear_refs` after a warm-up step, so it
measures the step's activations and temporaries above the resident weights, gradients and
optimizer-free baseline) or `torch.cuda.max_memory_allocated` on GPU. Also compares SP=2 with DP=2
on the same two processes (DP: each rank its own whole sequence). Prints tables; asserts nothing.
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
from memory_probe import pin_malloc, summed_loss_step  # noqa: E402
from memory_probe import rss_kib as _rss_kib

HEADS, KV_HEADS = 8, 4


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib(baseline_kib: int) -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return (_rss_kib("VmHWM") - baseline_kib) / 1024


def _step(rank, world, sp_size, mode, length, hidden, layers, repeats, memory_keys):
    from ulysses_pro.config.args import MemoryArguments, ModelArguments
    from ulysses_pro.models.attention import apply_sequence_parallel
    from ulysses_pro.models.memory_stack import apply_memory_stack
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.parallel import (
        init_sequence_parallel,
        pad_for_sequence_parallel,
        split_for_sequence_parallel,
    )

    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    model = build_tiny_model(
        "llama",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        max_position_embeddings=2 * length,
    ).to(device)
    model.train()
    model_args = ModelArguments(disable_gradient_checkpointing=not memory_keys["checkpointing"])
    memory = MemoryArguments(tiled_mlp=memory_keys["tiled_mlp"])
    head = apply_memory_stack(model, model_args, memory, training=True)
    generator = torch.Generator().manual_seed(rank // sp_size)  # DP groups get different sequences
    ids = torch.randint(3, 1000, (1, length), generator=generator)
    batch = {
        "input_ids": ids,
        "shift_labels": torch.roll(ids, -1, 1),
        "position_ids": torch.arange(length)[None],
    }
    if sp_size > 1:
        degree = 2 if mode == "hybrid" else None
        layout = init_sequence_parallel(
            sp_size, mode, num_heads=HEADS, num_kv_heads=KV_HEADS, ulysses_degree=degree
        )
        apply_sequence_parallel(model, layout)
        batch = pad_for_sequence_parallel(batch, layout.split_unit, 0)
        batch = split_for_sequence_parallel(
            batch, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
        )
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        summed_loss_step(model, head, batch)

    step()  # warm-up: allocates gradients, so the baseline below includes them
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    baseline = _rss_kib("VmRSS") if not torch.cuda.is_available() else 0
    _reset_peak()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return _peak_mib(baseline), (time.perf_counter() - started) / repeats


def measure(world: int, sp_size: int, mode: str, length: int, args) -> tuple[float, float] | None:
    """(max peak MiB over ranks, global tokens per second); None on CUDA with fewer GPUs than ranks."""
    memory = {"checkpointing": not args.no_checkpointing, "tiled_mlp": args.tiled_mlp}
    backend = "gloo"
    if torch.cuda.is_available():
        # gloo cannot send/recv CUDA tensors (the ring's exchange), and one GPU cannot host two
        # NCCL ranks: one GPU per rank, or the row is skipped.
        if world > torch.cuda.device_count():
            return None
        backend = "nccl"
    results = run_ranks(
        _step, world, sp_size, mode, length, args.hidden, args.layers, args.repeats, memory, backend=backend
    )
    peak = max(r[0] for r in results)
    seconds = max(r[1] for r in results)
    sequences = world // sp_size
    return peak, sequences * length / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tables", default="memory,dp", help="which tables: memory, dp (comma-separated)")
    parser.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    parser.add_argument("--tiled-mlp", action="store_true", help="add the tiled MLP")
    args = parser.parse_args()
    pin_malloc()
    tables = set(args.tables.split(","))
    configs = [
        (1, "none"),
        (2, "ulysses"),
        (2, "zigzag-ring"),
        (4, "ulysses"),
        (4, "zigzag-ring"),
        (4, "hybrid"),
    ]
    print(
        f"# one step (forward + backward), tiny llama hidden {args.hidden}, {args.layers} layers, {HEADS} heads / {KV_HEADS} KV, "
        f"{'no ' if args.no_checkpointing else ''}gradient checkpointing{', tiled MLP' if args.tiled_mlp else ''}"
    )
    print(
        f"# memory: {'CUDA max allocated' if torch.cuda.is_available() else 'CPU RSS high-water above the post-warm-up baseline'} (MiB, worst rank)"
    )
    print("| L | SP | mode | peak MiB/rank | vs SP=1 | tokens/s |")
    print("|---|---|---|---|---|---|")
    for length in args.lengths if "memory" in tables else []:
        base = None
        for sp_size, mode in configs:
            measured = measure(sp_size, sp_size, mode if sp_size > 1 else "ulysses", length, args)
            if measured is None:
                print(f"| {length} | {sp_size} | {mode} | needs {sp_size} GPUs | | |", flush=True)
                continue
            peak, throughput = measured
            base = peak if sp_size == 1 else base
            print(
                f"| {length} | {sp_size} | {mode} | {peak:.1f} | {peak / base:.2f} | {throughput:.0f} |",
                flush=True,
            )
    print("\n# SP=2 against DP=2 on the same two processes")
    print("| L | DP=2 tokens/s | SP=2 ulysses tokens/s | ratio | SP=2 ring tokens/s | ratio |")
    print("|---|---|---|---|---|---|")
    for length in args.lengths if "dp" in tables else []:
        rows = [
            measure(2, sp, mode, length, args)
            for sp, mode in ((1, "ulysses"), (2, "ulysses"), (2, "zigzag-ring"))
        ]
        if None in rows:
            print(f"| {length} | needs 2 GPUs | | | | |", flush=True)
            continue
        (_, dp), (_, uly), (_, ring) = rows
        print(
            f"| {length} | {dp:.0f} | {uly:.0f} | {uly / dp:.2f} | {ring:.0f} | {ring / dp:.2f} |", flush=True
        )


if __name__ == "__main__":
    main()

"""The tiled pure-torch reference kernel against the fused one, on this machine's device.

    python bench/attention_kernels.py [--lengths 2048 4096 8192] [--dtypes fp32 bf16] [--repeats 3]

One causal attention call (8 query heads, 4 KV heads, head dim 64, one row of L tokens), forward
and the backward the ring uses (given the final output and log-sum-exp), through the SP core's
kernel pairs (`parallel/kernels`): the reference (what fp32 on CUDA and soft-capped calls take, and
what bf16 full fine-tuning fell back to before q/k/v were cast to the autocast dtype) and the fused
kernel the dispatch picks for the device (ATen's CPU flash kernel on the CPU; the flash kernel on
CUDA). Time is the median of `--repeats` after a warm-up; memory is the peak of tensor bytes
allocated during the call (`LiveTensorBytes`). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from ulysses_pro.parallel import kernels  # noqa: E402
from ulysses_pro.parallel.kernels import reference  # noqa: E402
from ulysses_pro.parallel.kernels.varlen import Sequences  # noqa: E402
from ulysses_pro.planner.tensor_bytes import LiveTensorBytes  # noqa: E402

HEADS, KV_HEADS, DIM = 8, 4, 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _inputs(length: int, dtype: torch.dtype, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)

    def draw(heads: int) -> torch.Tensor:
        return torch.randn(1, heads, length, DIM, generator=generator, device=device, dtype=dtype)

    return draw(HEADS), draw(KV_HEADS), draw(KV_HEADS), draw(HEADS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    backend, length: int, dtype: torch.dtype, device: torch.device, repeats: int
) -> tuple[float, float]:
    """(median seconds of forward + backward, peak MiB allocated by them)."""
    q, k, v, grad = _inputs(length, dtype, device)
    sequences = Sequences.build([0, length], [0, length], uniform=True, device=device)
    scale = DIM**-0.5

    def call() -> None:
        out, lse = backend.forward(q, k, v, scale, True, sequences)
        backend.backward(grad, q, k, v, out, lse, scale, True, sequences)

    call()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - started)
    with LiveTensorBytes() as live:
        call()
    return statistics.median(times), live.peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# one causal call, {HEADS} / {KV_HEADS} heads, dim {DIM}, forward + backward, {device}")
    print(
        "| L | dtype | fused kernel | fused s | fused MiB | reference s | reference MiB | reference / fused time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for length in options.lengths:
        for name in options.dtypes:
            dtype = DTYPES[name]
            probe = torch.empty(1, HEADS, 1, DIM, dtype=dtype, device=device)
            fused = kernels.select_backend(probe)
            if fused is reference.REFERENCE:
                print(f"| {length} | {name} | none for this device and dtype | | | | | |", flush=True)
                continue
            fused_s, fused_mib = measure(fused, length, dtype, device, options.repeats)
            ref_s, ref_mib = measure(reference.REFERENCE, length, dtype, device, options.repeats)
            print(
                f"| {length} | {name} | {fused.name} | {fused_s:.3f} | {fused_mib:.0f} | {ref_s:.3f} | "
                f"{ref_mib:.0f} | {ref_s / fused_s:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""The sequence-parallel part of the Train tab: the layout `auto` picks for the model's heads, and the
planner's answer (`ulysses-pro plan`): per-rank memory at cutoff_len and the longest length that fits
the memory the user states. Traced on the meta device; no weight loads."""

from __future__ import annotations

import argparse

from ..config import RunConfig
from ..parallel.mesh import resolve_degrees
from ..planner.estimate import gib, longest_length, options_of, trace

# `plan`'s own helpers: the model's (query, KV) heads from its meta skeleton, and the configured
# mode's layout at a size (hybrid / ring where the heads do not allow that mode).
from ..planner.report import _heads as model_heads
from ..planner.report import _layouts as layout_for
from ..planner.report import parse_bytes
from .checks import InputError


def layout_text(config: RunConfig, nproc: int) -> str:
    """What SP will do: the configured mode's layout and the one `auto` picks, with the heads."""
    size = config.parallel.sequence_parallel_size
    heads, kv_heads = model_heads(config)
    lines = [
        f"{nproc} process(es): SP {size} x DP {max(1, nproc // size)}; "
        f"the model has {heads} attention heads, {kv_heads} KV heads"
    ]
    for mode in dict.fromkeys((config.parallel.sequence_parallel_mode, "auto")):
        try:
            ulysses, ring = resolve_degrees(size, mode, heads, kv_heads, config.parallel.ulysses_degree)
            lines.append(f"{mode}: ulysses {ulysses} x ring {ring}")
        except ValueError as err:
            lines.append(f"{mode}: {err}")
    return "\n".join(lines)


def memory_text(config: RunConfig, nproc: int, memory: str, device: str = "cuda") -> str:
    """Per-rank peak at cutoff_len and the longest sequence under `memory` per GPU (`plan`'s numbers)."""
    try:
        budget = parse_bytes(memory or "80GiB")
    except argparse.ArgumentTypeError as err:
        raise InputError(f"GPU memory: {err}") from None
    size, length = config.parallel.sequence_parallel_size, config.data.cutoff_len
    layout = layout_for(size, config, model_heads(config))
    if layout is None:
        raise InputError(f"sequence_parallel_size {size} fits no SP layout for this model's heads")
    options = options_of(config)
    estimate = trace(config, layout, length, options, world=nproc, device=device)
    longest, _ = longest_length(
        config, layout, options, budget, world=nproc, device=device,
        start=max(1024, length // 2), known={length: estimate},
    )  # fmt: skip
    fits = "fits" if estimate.peak <= budget else "does NOT fit"
    return "\n".join(
        (
            f"per rank at cutoff_len {length}, SP {size} (ulysses {layout.ulysses} x ring {layout.ring}), "
            f"{options.describe()}:",
            f"  peak {gib(estimate.peak)} GiB = static {gib(estimate.static)} GiB (weights, optimizer state"
            + (f", frozen reference {gib(estimate.frozen)} GiB" if estimate.frozen else "")
            + f") + {gib(estimate.peak - estimate.static)} GiB at the step's peak; {fits} {gib(budget)} GiB",
            f"  longest sequence that fits {gib(budget)} GiB per GPU: {longest:,} tokens"
            if longest
            else f"  not even 1,024 tokens fit {gib(budget)} GiB per GPU",
            "  (not counted: CUDA context, fragmentation, NCCL buffers)",
        )
    )

"""`ulysses-pro plan CONFIG.yaml [--gpu-memory 80GiB] [--nproc 8]`: memory before any weight exists.

Prints the per-rank peak at the configured `cutoff_len` for the configured SP size and memory
options (with its parts), then, for every SP size up to `--nproc` and a few memory option sets,
the longest sequence that fits the per-GPU memory. Everything is traced on the meta device from
the model's config (planner/estimate.py); nothing is downloaded but `config.json` for a hub id.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from tqdm import tqdm

from .estimate import Options, gib, longest_length, options_of, trace
from .skeleton import Layout

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20}
_UNITS.update({"g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40})


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '141g', '3072MiB' -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size like 80GiB or 3072MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _layouts(size: int, config, heads: tuple[int, int]) -> Layout | None:
    """The configured SP mode at `size`, or hybrid / ring when the heads do not allow it."""
    from ..parallel.mesh import resolve_degrees

    heads, kv_heads = heads
    mode = config.parallel.sequence_parallel_mode
    for candidate in (mode, "hybrid", "zigzag-ring") if size > 1 else (mode,):
        try:
            ulysses, ring = resolve_degrees(size, candidate, heads, kv_heads, config.parallel.ulysses_degree)
            return Layout(ulysses, ring)
        except ValueError:
            continue
    return None


def _heads(config) -> tuple[int, int]:
    from .skeleton import build_skeleton

    model = build_skeleton(config.model, config.finetuning, config.training)
    text = model.config.get_text_config()
    return text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads


def _option_sets(configured: Options) -> list[tuple[str, Options]]:
    sets = [("as configured", configured)]
    candidates = [
        ("no checkpointing", dataclasses.replace(configured, checkpointing=False, offload=False)),
        ("+ tiled MLP", dataclasses.replace(configured, checkpointing=True, tiled_mlp=True)),
        (
            "+ tiled MLP + offload",
            dataclasses.replace(configured, checkpointing=True, tiled_mlp=True, offload=True),
        ),
    ]
    for name, options in candidates:
        if options not in [o for _, o in sets]:
            sets.append((name, options))
    return sets


def _static_note(config, nproc: int) -> str:
    if config.fsdp is not None and config.fsdp.cpu_offload:
        return "; FSDP2 keeps their shards in host memory: this is one gathered layer"
    if config.fsdp is not None:
        return ", as FSDP2 shards, plus one gathered layer"
    return ", DDP buckets" if nproc > 1 else ""


def run(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ulysses-pro plan", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the training YAML (LLaMA-Factory keys)")
    parser.add_argument(
        "--gpu-memory", type=parse_bytes, default=parse_bytes("80GiB"), help="per GPU (default 80GiB)"
    )
    parser.add_argument("--nproc", type=int, default=8, help="GPUs the run will use (default 8)")
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="kernels to assume (default cuda)"
    )
    options, overrides = parser.parse_known_args(arguments)
    from ..config import ConfigError, load_config

    try:
        config = load_config(options.config, overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    length = config.data.cutoff_len
    size = config.parallel.sequence_parallel_size
    heads = _heads(config)
    layout = _layouts(size, config, heads)
    if layout is None:
        print(f"sequence_parallel_size {size} fits no SP layout for this model's heads", file=sys.stderr)
        return 2
    configured = options_of(config)
    estimate = trace(config, layout, length, configured, world=options.nproc, device=options.device)
    budget = options.gpu_memory
    print(
        f"# {config.model.model_name_or_path}: {estimate.trainable:,} trainable parameters, stage {config.finetuning.stage}"
    )
    print(
        f"# per rank at cutoff_len {length}, SP {size} (ulysses {layout.ulysses} x ring {layout.ring}), {configured.describe()}:"
    )
    print(
        f"#   peak {gib(estimate.peak)} GiB = static {gib(estimate.static)} GiB (weights, optimizer state"
        f"{_static_note(config, options.nproc)}"
        + (f"; frozen reference / reward model {gib(estimate.frozen)} GiB" if estimate.frozen else "")
        + f") + {gib(estimate.peak - estimate.static)} GiB at the step's "
        "peak (gradients, activations, loss chunks)"
        + (f"; host memory for offloaded checkpoints and shards {gib(estimate.host)} GiB" if estimate.host else "")
    )
    print(
        f"#   {'fits' if estimate.peak <= budget else 'does NOT fit'} {gib(budget)} GiB per GPU (plus the CUDA context, ~0.5-1 GiB)"
    )
    sets = _option_sets(configured)
    sizes = [s for s in (1, 2, 4, 8, 16, 32, 64) if s <= options.nproc and options.nproc % s == 0]
    print(
        f"\nLongest trainable sequence per sample under {gib(budget)} GiB per GPU (tokens; peak GiB at cutoff_len {length}):\n"
    )
    print("| SP | layout | " + " | ".join(name for name, _ in sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    candidates = {sp: _layouts(sp, config, heads) for sp in sizes}
    cells_to_trace = sum(len(sets) for candidate in candidates.values() if candidate is not None)
    progress = tqdm(total=cells_to_trace, desc="tracing", unit="cell", file=sys.stderr, leave=False)
    for sp, candidate in candidates.items():
        if candidate is None:
            print(f"| {sp} | heads do not split | " + " | ".join("-" for _ in sets) + " |")
            continue
        cells = []
        for _, option_set in sets:
            points = {length: estimate} if (candidate, option_set) == (layout, configured) else {}
            if length not in points:
                points[length] = trace(
                    config, candidate, length, option_set, world=options.nproc, device=options.device
                )
            at_cutoff = points[length]
            longest, _ = longest_length(
                config, candidate, option_set, budget, world=options.nproc, device=options.device,
                start=max(1024, length // 2), known=points,
            )  # fmt: skip
            cells.append(f"{longest:,} ({gib(at_cutoff.peak)})")
            progress.update()
        progress.clear()
        print(f"| {sp} | {candidate.ulysses}x{candidate.ring} | " + " | ".join(cells) + " |", flush=True)
    progress.close()
    print(
        "\nNot counted: CUDA context, allocator fragmentation, NCCL buffers; autocast is traced in the weights' dtype."
    )
    return 0

"""Memory of the frozen reference of full-parameter DPO per engine, with the planner's beside it.

    python bench/reference_memory.py [--hidden 512] [--layers 6] [--engines DDP ZeRO-3 FSDP2]

Each row trains one step of full-parameter DPO (bf16, 4 processes, SP=2) through `run_stage` and
then counts, on every rank, the bytes of the reference's parameters that rank holds: the whole
copy under DDP, the rank's partition under ZeRO-3 (`ds_tensor`), its shard under FSDP2
(`to_local()`). "fp32 copy" rows run the same with the copy left as the loader made the policy
(trainable weights upcast to fp32), which is what the reference was before it was cast back to the
compute dtype. The planner column is `Estimate.frozen` for the same config: the device bytes of the
reference during its forward, i.e. the held share plus, when sharded, the one layer a forward
gathers (for FSDP2's offload only that layer: the shards stay in host memory). Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)
from tests.train.harness import ZERO3  # noqa: E402  (the ZeRO-3 config the tests use)

DATA = str(Path(__file__).resolve().parent.parent / "data")
MIB = 2**20
ENGINES = ["DDP", "ZeRO-3", "FSDP2", "FSDP2 + offload"]


def _engine_keys(engine: str, scratch: Path) -> dict:
    if engine == "ZeRO-3":
        config = scratch / "zero3.json"
        config.write_text(json.dumps({**ZERO3, "bf16": {"enabled": "auto"}}))
        return {"deepspeed": str(config)}
    return (
        {"fsdp": {"FSDP2": "full_shard", "FSDP2 + offload": "full_shard offload"}[engine]}
        if "FSDP2" in engine
        else {}
    )


def _held_bytes(module) -> int:
    """Bytes of the parameters this rank holds: a ZeRO-3 partition, an FSDP2 shard, or the whole."""
    total = 0
    for param in module.parameters():
        if hasattr(param, "ds_tensor"):
            total += param.ds_tensor.numel() * param.ds_tensor.element_size()
        elif hasattr(param, "to_local"):
            local = param.to_local()
            total += local.numel() * local.element_size()
        else:
            total += param.numel() * param.element_size()
    return total


def _rank(rank: int, world_size: int, keys: dict, fp32_copy: bool) -> tuple[int, int, int]:
    from tests.train.harness import training_config
    from ulysses_pro.planner import Layout, trace
    from ulysses_pro.planner.estimate import options_of
    from ulysses_pro.train import reference
    from ulysses_pro.train.stages import run_stage

    if fp32_copy:  # the copy as it was: no cast back to the compute dtype
        reference.in_compute_dtype = lambda model, dtype: model
    trainer = run_stage(training_config(**keys))
    held = _held_bytes(trainer.reference.frozen)
    config = training_config(**keys)
    estimate = trace(
        config, Layout(ulysses=2), keys["cutoff_len"], options_of(config), world=world_size, device="cpu"
    )
    # FSDP2's offload keeps the shards on the host: the planner's device share is then one layer.
    return held, estimate.frozen, estimate.host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--engines", nargs="*", default=ENGINES, help=f"of {ENGINES}")
    options = parser.parse_args()
    model = (
        f"tiny:llama?hidden_size={options.hidden}&num_layers={options.layers}&num_heads=8&num_kv_heads=4"
        "&max_position_embeddings=4096"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for engine in options.engines:
            for fp32_copy in (True, False) if engine in ("DDP", "FSDP2") else (False,):
                keys = {
                    "model_name_or_path": model,
                    "stage": "dpo",
                    "dataset": "demo_pairs",
                    "dataset_dir": DATA,
                    "finetuning_type": "full",
                    "bf16": True,
                    "cutoff_len": 256,
                    "max_steps": 1,
                    "per_device_train_batch_size": 1,
                    "sequence_parallel_size": 2,
                    "output_dir": str(scratch / "out"),
                    **_engine_keys(engine, scratch),
                }
                results = run_ranks(_rank, 4, keys, fp32_copy)
                held = max(r[0] for r in results)
                _, device, host = results[0]
                label = f"{engine} ({'fp32 copy, before' if fp32_copy else 'bf16'})"
                planned = (
                    ""
                    if fp32_copy
                    else f"{device / MIB:.1f}" + (f" (+ {host / MIB:.1f} host)" if host else "")
                )
                rows.append((label, held, planned))
                print(f"{label}: {held / MIB:.1f} MiB, planner {planned}", file=sys.stderr, flush=True)
    print(
        f"\nFull-parameter DPO, bf16, Llama-shaped hidden {options.hidden}, {options.layers} layers, "
        "4 processes (DP 2 x SP 2), CPU\n"
    )
    print("| engine | reference MiB held / rank | planner MiB / rank (device) |")
    print("|---|---|---|")
    for label, held, planned in rows:
        print(f"| {label} | {held / MIB:.1f} | {planned} |")


if __name__ == "__main__":
    main()

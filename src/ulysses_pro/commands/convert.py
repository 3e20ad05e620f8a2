"""`ulysses-pro convert CHECKPOINT OUTPUT [--dtype bf16]`: a sharded checkpoint (FSDP2 or DeepSpeed
ZeRO) as a Hugging Face folder (`engines/consolidate.py`), on one process, no GPU."""

from __future__ import annotations

import argparse

import torch

from ..config import ConfigError
from ..engines.consolidate import CheckpointError, convert_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ulysses-pro convert", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint-N folder written under fsdp or deepspeed")
    parser.add_argument("output", help="the Hugging Face folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: as trained)")
    options = parser.parse_args(arguments)
    try:
        folder = convert_checkpoint(options.checkpoint, options.output, DTYPES.get(options.dtype))
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    print(f"wrote {folder}")
    return 0

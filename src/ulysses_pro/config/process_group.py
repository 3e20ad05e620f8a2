"""The default process group on CPU-only machines, started before TrainingArguments does."""

from __future__ import annotations

import os


def init_cpu_deepspeed_comm(backend: str) -> None:
    """DeepSpeed's own communicator over the group `init_cpu_process_group` started. On GPUs TrainingArguments starts it;
    with `use_cpu` it does not, and DeepSpeed then takes the world for one process when it fills
    `train_batch_size: auto` (its batch check fails on every config that sets it)."""
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)


def init_cpu_process_group(backend: str, timeout_seconds: int) -> None:
    """Start the default process group with the run's `ddp_timeout` (before TrainingArguments does).

    With `use_cpu`, transformers starts it without the timeout, so a collective on the default
    group (the logged loss's gather, DDP's gradient all-reduce) waits 30 minutes for a hung rank
    instead of `ddp_timeout` seconds; accelerate keeps a group that already exists.
    """
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group(
            backend,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            timeout=timedelta(seconds=int(timeout_seconds)),
        )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

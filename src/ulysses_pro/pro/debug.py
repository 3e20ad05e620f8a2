"""`--debug` / ULYSSES_DEBUG=1: every rank logs its SP place, batch shapes, token counts and step times."""

from __future__ import annotations

import logging
import os
import sys
import time

import torch
from transformers import TrainerCallback

logger = logging.getLogger("ulysses_pro.debug")


def enable_debug_logging() -> None:
    """Verbose logs on every rank, each line tagged with its rank."""
    rank = os.environ.get("RANK", "0")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[ulysses-pro rank {rank}] %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("ulysses_pro")
    package.handlers[:] = [handler]
    package.setLevel(logging.DEBUG)
    package.propagate = False


def describe_batch(inputs: dict[str, torch.Tensor]) -> str:
    """Shapes of every tensor and the number of target tokens on this rank."""
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items() if isinstance(v, torch.Tensor))
    labels = inputs.get("shift_labels", inputs.get("labels"))
    targets = int((labels != -100).sum()) if labels is not None else 0
    return f"{shapes}; {targets} target tokens"


class DebugCallback(TrainerCallback):
    """Per-rank step timing, and the SP layout at the start of training."""

    def __init__(self, layout=None):
        self.layout = layout
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        where = self.layout.describe() if self.layout is not None else "no sequence parallelism"
        logger.info("world size %d, process %d: %s", args.world_size, args.process_index, where)

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is not None:
            logger.info("step %d took %.3f s", state.global_step, time.perf_counter() - self.started)

    def observe_batch(self, inputs: dict[str, torch.Tensor]) -> None:
        logger.debug("batch: %s", describe_batch(inputs))

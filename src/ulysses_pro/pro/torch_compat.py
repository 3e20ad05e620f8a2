"""Checkpoint loading that keeps `torch.load(weights_only=True)` on PyTorch >= 2.6.

Resuming reads optimizer, scheduler, RNG, scaler and DeepSpeed states. Some of them pickle a few
non-tensor classes (numpy arrays in RNG states; DeepSpeed's loss scaler, ZeRO stage enum and
fragment addresses). Rather than turning `weights_only` off or patching `torch.load`, the loads run
inside `torch.serialization.safe_globals` with exactly those classes allowed, for the duration of
the load only; anything else in a checkpoint is refused with a `CheckpointError` that says which
class, which checkpoint, and what the user can do.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch

# (module, attribute) of every class a checkpoint written by our trainers may pickle. Modules that
# are not installed (DeepSpeed on a CPU machine, say) are skipped: their checkpoints cannot exist.
CHECKPOINT_GLOBALS: tuple[tuple[str, str], ...] = (
    # numpy RNG state (Trainer's rng_state.pth)
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.dtypes", "UInt32DType"),
    ("numpy.dtypes", "Int64DType"),
    ("numpy.dtypes", "Float64DType"),
    # DeepSpeed engine / ZeRO optimizer states
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be loaded safely."""


def allowed_checkpoint_classes() -> list[object]:
    """The importable members of CHECKPOINT_GLOBALS."""
    found = []
    for module_name, attribute in CHECKPOINT_GLOBALS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attribute):
            found.append(getattr(module, attribute))
    return found


_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


@contextlib.contextmanager
def safe_checkpoint_loading(where: str | Path | None = None) -> Iterator[None]:
    """Allow exactly the checkpoint classes while the block runs; explain any refusal.

    `torch.serialization.safe_globals` restores the previous allow-list on exit, so nothing
    outlives the block and nested uses (transformers has its own for numpy) compose.
    """
    try:
        with torch.serialization.safe_globals(allowed_checkpoint_classes()):
            yield
    except pickle.UnpicklingError as error:
        match = _UNSUPPORTED.search(str(error))
        culprit = match.group(1) if match else "an object that is not tensor data"
        place = f"checkpoint {where}" if where is not None else "a checkpoint"
        raise CheckpointError(
            f"refused to load {place}: it contains {culprit}, which is not on Ulysses Pro's allow-list of "
            "checkpoint classes (torch.load runs with weights_only=True). If the checkpoint was written by "
            "another program, resume from one written by ulysses-pro, or start over with "
            "overwrite_output_dir: true; only if you trust the file, add the class with "
            "torch.serialization.add_safe_globals in your own code."
        ) from None


def safe_load(path: str | Path, map_location: str | torch.device | None = "cpu"):
    """`torch.load(path, weights_only=True)` with the checkpoint allow-list."""
    with safe_checkpoint_loading(path):
        return torch.load(path, map_location=map_location, weights_only=True)

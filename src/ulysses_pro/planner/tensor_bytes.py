"""Live tensor bytes, counted op by op: what a GPU caching allocator reports as `max_memory_allocated`.

`LiveTensorBytes` is a dispatch mode: every new storage an op creates (forward, backward and the
optimizer alike) is added when it appears and subtracted when it is freed. It works on real
devices (a CPU measurement of GPU-style allocation) and on the meta device, where nothing is
computed, which is how the planner traces a training step from a model's config alone.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind some tensors (views counted once)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live storages created inside the mode and their peak (`reset_peak()` restarts it).

    Storages that existed before entering (weights, say) are not counted: pass them as `baseline`.
    """

    def __init__(self, baseline: int = 0, *, record_peak: bool = False):
        super().__init__()
        self.live = baseline
        self.peak = baseline
        self._tracked: dict[int, tuple[str, tuple, int]] = {}
        # With `record_peak`, what was alive at the peak: (op, shape, bytes) per storage (slow; diagnosis).
        self.record_peak = record_peak
        self.at_peak: list[tuple[str, tuple, int]] = []

    def reset_peak(self) -> None:
        self.peak = self.live

    def _release(self, key: int, size: int) -> None:
        self._tracked.pop(key, None)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = id(storage), storage.nbytes()
            if key in self._tracked or size == 0:
                continue
            self._tracked[key] = (str(func), tuple(tensor.shape), size)
            self.live += size
            if self.live > self.peak:
                self.peak = self.live
                if self.record_peak:
                    self.at_peak = list(self._tracked.values())
            weakref.finalize(storage, self._release, key, size)
        return out

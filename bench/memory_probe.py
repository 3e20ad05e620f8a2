"""Memory readings shared by the bench scripts (CPU RSS, live tensor bytes, CUDA allocator).

- RSS: `/proc/self/status` VmRSS / VmHWM; the high-water mark is reset through
  `/proc/self/clear_refs`. `pin_malloc()` (call before starting worker processes) makes glibc serve
  large allocations with mmap, so freed tensors leave the resident set and the high-water mark
  tracks live tensors rather than heap fragmentation.
- Live tensor bytes: `LiveTensorBytes`, a dispatch mode that adds every new tensor storage an op
  creates (forward, backward and optimizer alike) and subtracts it when the storage is freed; its
  peak is what a GPU caching allocator reports as `max_memory_allocated`, measured on the CPU.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MIB = 2**20


def pin_malloc(threshold: int = 1 << 16) -> None:
    """For processes started after this call: glibc mmaps allocations above `threshold` bytes."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(threshold))


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_rss_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def rss_peak_mib() -> float:
    return rss_kib("VmHWM") / 1024


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind some tensors (views counted once)."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of live tensor storages created inside the mode, and their peak (`reset_peak()` to restart).

    Storages that existed before entering (weights, say) are not counted; add them with `baseline`.
    """

    def __init__(self, baseline: int = 0):
        super().__init__()
        self.live = baseline
        self.peak = baseline
        self._tracked: set[int] = set()

    def reset_peak(self) -> None:
        self.peak = self.live

    def _release(self, key: int, size: int) -> None:
        self._tracked.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self._tracked or storage.nbytes() == 0:
                continue
            self._tracked.add(key)
            size = storage.nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, size)
        return out

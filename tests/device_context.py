"""Test-side instruments for the SP core's device contract (DESIGN contract 9).

`factories_default_to("meta")`: every tensor factory without an explicit device lands on another
device. With the inputs on the CPU, a tensor the code under test creates without `device=` then
sits on the meta device and the next operation mixing it with a CPU tensor fails: the CPU proof
that the code would create nothing on the wrong device on CUDA either.

`HostSyncs`: counts the calls that make a CUDA host wait for the device (`.item()`, `.tolist()`,
`bool(t)`, `nonzero`, boolean-mask indexing, ...), wherever they run.

Autograd runs custom backward functions outside the caller's modes and default-device context, so
both instruments also wrap the backwards of the SP core's autograd functions.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from ulysses_pro.parallel import comm, reduce, ring


def _sp_autograd_functions() -> list[type]:
    found = []
    for module in (comm, reduce, ring):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, torch.autograd.Function) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


@contextlib.contextmanager
def _in_sp_backwards(context: Callable[[], contextlib.AbstractContextManager]) -> Iterator[None]:
    originals = {}
    for cls in _sp_autograd_functions():
        original = cls.__dict__["backward"].__func__

        def backward(ctx, *grads, _original=original):
            with context():
                return _original(ctx, *grads)

        originals[cls] = cls.__dict__["backward"]
        cls.backward = staticmethod(backward)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.backward = original


@contextlib.contextmanager
def factories_default_to(device: str) -> Iterator[None]:
    """Default device for factory calls, in forward and in the SP core's custom backwards."""
    with _in_sp_backwards(lambda: torch.device(device)), torch.device(device):
        yield


_SYNCING = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.nonzero,
    torch.Tensor.nonzero,
    torch.argwhere,
    torch.masked_select,
    torch.Tensor.masked_select,
    torch.unique,
    torch.Tensor.unique,
    torch.unique_consecutive,
}


def _masks_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class _Counter(TorchFunctionMode):
    def __init__(self, calls: list[str]):
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING or (
            func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _masks_index(args)
        ):
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs() -> Iterator[list[str]]:
    """The names of the host-syncing calls made inside (forward and SP backwards)."""
    calls: list[str] = []
    with _in_sp_backwards(lambda: _Counter(calls)), _Counter(calls):
        yield calls

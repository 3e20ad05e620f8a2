"""Make every tensor factory without an explicit device land on another device (e.g. meta).

With the inputs on the CPU, any tensor the code under test creates without `device=` then sits on
the meta device and the next operation mixing it with a CPU tensor fails: the CPU proof that the
code would create nothing on the wrong device on CUDA either. Autograd runs custom backward
functions outside the caller's default-device context, so the backwards of the SP core's autograd
functions are wrapped to run inside it as well.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch

from ulysses_pro.parallel import comm, reduce, ring


def _sp_autograd_functions() -> list[type]:
    found = []
    for module in (comm, reduce, ring):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, torch.autograd.Function) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


@contextlib.contextmanager
def factories_default_to(device: str) -> Iterator[None]:
    """Default device for factory calls, in forward and in the SP core's custom backwards."""
    originals = {}
    for cls in _sp_autograd_functions():
        original = cls.__dict__["backward"].__func__

        def backward(ctx, *grads, _original=original):
            with torch.device(device):
                return _original(ctx, *grads)

        originals[cls] = cls.__dict__["backward"]
        cls.backward = staticmethod(backward)
    try:
        with torch.device(device):
            yield
    finally:
        for cls, original in originals.items():
            cls.backward = original

"""Attention kernels of the SP core: (output, log-sum-exp) of queries over keys, and gradients given
the *final* (merged) output and log-sum-exp.

Passing the merged output and log-sum-exp into a block's backward is what makes blockwise gradients
exact: with P = exp(S - lse_final) and delta = rowsum(dO * O_final), every block's
dS = P * (dO V^T - delta) is its share of the full softmax gradient (FlashAttention-2, Dao 2023).

Backends, chosen per call from the query's device and dtype:
- CUDA, fp16/bf16: the flash-attn package when installed (>= 2.6), else PyTorch's own flash
  kernels (sm80+); both as one varlen call (`cuda.py`);
- CPU: ATen's fused CPU flash kernel (`reference.py`);
- otherwise (fp32 on CUDA, other devices): the pure-torch reference, tiled by query rows.
Which backend each attention path used is logged once per run and readable from `kernels_used()`.
"""

from __future__ import annotations

import logging

import torch

from . import cuda
from .reference import CPU_FLASH, REFERENCE, accumulation_dtype
from .varlen import Sequences

logger = logging.getLogger(__name__)

# (path, backend name) pairs already logged, and the last backend of each path: a record of what
# ran, like the `warnings` registry; it never changes a result.
_LOGGED: set[tuple[str, str]] = set()
_LAST_USED: dict[str, str] = {}


def select_backend(q: torch.Tensor):
    """The kernel pair for queries like `q` (see the module docstring for the order)."""
    if q.device.type == "cpu":
        return CPU_FLASH
    if q.device.type == "cuda" and q.dtype in cuda.HALF_TYPES and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0:
        package = cuda.flash_attn_package()
        if package is not None:
            return package
        if cuda.aten_flash_supported(q.device.index or 0):
            return cuda.ATEN_FLASH
    return REFERENCE


def _record(path: str, backend) -> None:
    _LAST_USED[path] = backend.name
    if (path, backend.name) not in _LOGGED:
        _LOGGED.add((path, backend.name))
        logger.info("%s: %s", path, backend.name)


def kernels_used() -> dict[str, str]:
    """The backend each attention path ran last (e.g. for the GPU check to assert on)."""
    return dict(_LAST_USED)


def block_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool,
    sequences: Sequences,
    *,
    path: str = "attention",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, lse) of q (b, h, sq, d) over k/v (b, kv, sk, d); lse (b, h, sq) in fp32 (fp64 kept),
    -inf for a row that sees no key."""
    backend = select_backend(q)
    _record(path, backend)
    return backend.forward(q, k, v, scale, causal, sequences)


def block_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    causal: bool,
    sequences: Sequences,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of one call given the final (merged) out and lse; dk, dv have the KV heads of k."""
    return select_backend(q).backward(grad_out, q, k, v, out, lse, scale, causal, sequences)


__all__ = [
    "Sequences",
    "accumulation_dtype",
    "block_backward",
    "block_forward",
    "kernels_used",
    "select_backend",
]

"""Attention kernels of the SP core: (output, log-sum-exp) of queries over keys, and gradients given
the *final* (merged) output and log-sum-exp.

Passing the merged output and log-sum-exp into a block's backward is what makes blockwise gradients
exact: with P = exp(S - lse_final) and delta = rowsum(dO * O_final), every block's
dS = P * (dO V^T - delta) is its share of the full softmax gradient (FlashAttention-2, Dao 2023).

Backends, chosen per call from the query's device and dtype:
- CUDA, fp16/bf16, sm80+: the flash-attn package when installed (>= 2.6), else PyTorch's own
  flash kernels (not for soft-capping, nor for windows when this torch's kernel lacks window
  arguments); both as one varlen call (`cuda.py`);
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


def select_backend(q: torch.Tensor, window: int = -1, softcap: float = 0.0):
    """The kernel pair for queries like `q` (see the module docstring for the order); a sliding
    window or soft-capping narrows the choice to the kernels that apply them."""
    if q.device.type == "cpu":
        return REFERENCE if softcap else CPU_FLASH  # ATen's CPU kernel has no cap; windows are banded calls
    if q.device.type == "cuda" and q.dtype in cuda.HALF_TYPES and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0:
        if not cuda.ampere_or_newer(q.device.index or 0):
            return REFERENCE  # FlashAttention-2 (either package) has no kernels before sm80
        package = cuda.flash_attn_package()
        if package is not None:
            return package  # flash-attn >= 2.6 takes window_size and softcap
        if cuda.aten_flash_supported(q.device.index or 0) and not softcap:
            if window < 0 or cuda.aten_flash_takes_windows():
                return cuda.ATEN_FLASH
    return REFERENCE


def _why_reference_on_cuda(q: torch.Tensor, softcap: float) -> str:
    if q.dtype not in cuda.HALF_TYPES:
        return f"{str(q.dtype)[6:]} inputs: the flash kernels take fp16/bf16 (train with bf16: true)"
    if q.shape[-1] > 256 or q.shape[-1] % 8:
        return f"head size {q.shape[-1]}: the flash kernels take multiples of 8 up to 256"
    if not cuda.ampere_or_newer(q.device.index or 0):
        return "a GPU older than sm80: FlashAttention-2 has no kernels for it"
    if softcap:
        return "soft-capping: PyTorch's flash kernel has none (flash-attn >= 2.6 does)"
    return "no flash kernel for this call (a window this torch's flash kernel cannot take)"


def _record(path: str, backend, q: torch.Tensor, softcap: float = 0.0) -> None:
    _LAST_USED[path] = backend.name
    if (path, backend.name) not in _LOGGED:
        _LOGGED.add((path, backend.name))
        if backend is REFERENCE and q.device.type == "cuda":
            # Correct, but several times slower and more memory than a fused kernel: say so, once.
            logger.warning(
                "%s: the tiled reference kernel runs on CUDA (%s)", path, _why_reference_on_cuda(q, softcap)
            )
        else:
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
    window: int = -1,
    softcap: float = 0.0,
    path: str = "attention",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, lse) of q (b, h, sq, d) over k/v (b, kv, sk, d); lse (b, h, sq) in fp32 (fp64 kept),
    -inf for a row that sees no key. `window` >= 0 hides keys more than `window` before a query's
    diagonal (flash-attention's window_size_left, bottom-right aligned per problem); `softcap` > 0
    scores cap * tanh(s / cap) (Gemma 2)."""
    backend = select_backend(q, window, softcap)
    _record(path, backend, q, softcap)
    return backend.forward(q, k, v, scale, causal, sequences, window, softcap)


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
    *,
    window: int = -1,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of one call given the final (merged) out and lse; dk, dv have the KV heads of k."""
    backend = select_backend(q, window, softcap)
    return backend.backward(grad_out, q, k, v, out, lse, scale, causal, sequences, window, softcap)


__all__ = [
    "Sequences",
    "accumulation_dtype",
    "block_backward",
    "block_forward",
    "kernels_used",
    "select_backend",
]

"""Block attention kernels for ring attention: (output, log-sum-exp) of queries over one key block,
and the block's gradients given the *final* output and log-sum-exp.

Passing the merged output and log-sum-exp into a block's backward is what makes blockwise
gradients exact: with P = exp(S - lse_final) and delta = rowsum(dO * O_final), every block's
dS = P * (dO V^T - delta) is its share of the full softmax gradient (FlashAttention-2, Dao 2023).

Backends, chosen per call:
- CPU: ATen's fused flash kernel (`_scaled_dot_product_flash_attention_for_cpu` and its backward),
  which returns the log-sum-exp a merge needs;
- CUDA with flash-attn >= 2.6 installed, half precision and an unmasked or causal block: its
  `_flash_attn_forward/_flash_attn_backward`, after a one-off self-check against the math path;
- otherwise a pure-torch math path that materialises one (query tile x block) slab at a time.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# Query rows per tile where a block needs an explicit mask: the mask (and the math path's scores)
# exist one (tile x block) slab at a time, so temporaries stay O(tile x block), not O(block^2).
QUERY_TILE = 256


@dataclass(frozen=True)
class BlockMask:
    """Which keys of a block each query may see: all, causal (square, diagonal-aligned) or custom.

    `allowed(rows)` gives the boolean (b, 1, len(rows), block) mask of a query tile (custom only).
    """

    kind: str
    allowed: Callable[[slice], torch.Tensor] | None = None

    def tile(self, rows: slice, keys: int, device: torch.device) -> torch.Tensor | None:
        if self.kind == "full":
            return None
        if self.kind == "causal":
            query_at = torch.arange(rows.start, rows.stop, device=device)
            return (torch.arange(keys, device=device)[None, :] <= query_at[:, None])[None, None]
        return self.allowed(rows)


FULL = BlockMask("full")
CAUSAL = BlockMask("causal")


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half types and fp32 (the contract), fp64 kept when given (strict tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def tiles(length: int):
    for start in range(0, length, QUERY_TILE):
        yield slice(start, min(start + QUERY_TILE, length))


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


# ---------------------------------------------------------------------------------------------
# Math path (any device, any dtype; the reference the fused paths are checked against)


def _math_forward(q, k, v, scale, mask: BlockMask):
    acc = accumulation_dtype(q)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
    kf, vf = k.to(acc), v.to(acc)
    for rows in tiles(q.shape[2]):
        allowed = mask.tile(rows, k.shape[2], q.device)
        if allowed is not None and not allowed.any():
            continue
        scores = torch.matmul(q[:, :, rows].to(acc), kf.transpose(-1, -2)) * scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        lse[:, :, rows] = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - lse[:, :, rows].unsqueeze(-1)).nan_to_num(0.0)
        out[:, :, rows] = torch.matmul(probs, vf)
    return out, lse


def _math_backward(grad_out, q, k, v, out, lse, scale, mask: BlockMask):
    acc = accumulation_dtype(q)
    qf, kf, vf, grad_out = q.to(acc), k.to(acc), v.to(acc), grad_out.to(acc)
    delta = (grad_out * out.to(acc)).sum(dim=-1, keepdim=True)
    grad_q, grad_k, grad_v = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
    for rows in tiles(q.shape[2]):
        allowed = mask.tile(rows, k.shape[2], q.device)
        if allowed is not None and not allowed.any():
            continue
        q_rows, grad_rows = qf[:, :, rows], grad_out[:, :, rows]
        scores = torch.matmul(q_rows, kf.transpose(-1, -2)) * scale
        probs = torch.exp(scores - lse[:, :, rows].unsqueeze(-1))
        if allowed is not None:
            probs = probs.masked_fill(~allowed, 0.0)
        probs = probs.nan_to_num(0.0)
        grad_v += torch.matmul(probs.transpose(-1, -2), grad_rows)
        grad_scores = probs * (torch.matmul(grad_rows, vf.transpose(-1, -2)) - delta[:, :, rows])
        grad_q[:, :, rows] = torch.matmul(grad_scores, kf) * scale
        grad_k += torch.matmul(grad_scores.transpose(-1, -2), q_rows) * scale
    return grad_q, grad_k, grad_v


# ---------------------------------------------------------------------------------------------
# CPU: ATen's fused flash kernel


def _cpu_forward(q, k, v, scale, mask: BlockMask):
    acc = accumulation_dtype(q)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if mask.kind != "custom":
        return kernel(q, k, v, 0.0, mask.kind == "causal", scale=scale)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
    for rows in tiles(q.shape[2]):
        allowed = mask.tile(rows, k.shape[2], q.device)
        seen = allowed.any(dim=-1)  # (b, 1, rows)
        if not seen.any():
            continue
        tile_out, tile_lse = kernel(
            q[:, :, rows], k, v, 0.0, False, attn_mask=_additive(allowed, acc), scale=scale
        )
        # The kernel reports lse 0 for a row that sees no key; the merge needs -inf there.
        out[:, :, rows] = tile_out
        lse[:, :, rows] = tile_lse.masked_fill(~seen, float("-inf"))
    return out, lse


def _cpu_backward(grad_out, q, k, v, out, lse, scale, mask: BlockMask):
    acc = accumulation_dtype(q)
    q, k, v, grad_out, out = q.to(acc), k.to(acc), v.to(acc), grad_out.to(acc), out.to(acc)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if mask.kind != "custom":
        return kernel(grad_out, q, k, v, out, lse, 0.0, mask.kind == "causal", scale=scale)
    grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for rows in tiles(q.shape[2]):
        allowed = mask.tile(rows, k.shape[2], q.device)
        if not allowed.any():
            continue
        # Rows that see nothing here carry a finite global lse; their masked probabilities are 0.
        dq, dk, dv = kernel(
            grad_out[:, :, rows].contiguous(),
            q[:, :, rows].contiguous(),
            k,
            v,
            out[:, :, rows].contiguous(),
            lse[:, :, rows].contiguous(),
            0.0,
            False,
            attn_mask=_additive(allowed, acc),
            scale=scale,
        )
        grad_q[:, :, rows] = dq
        grad_k += dk
        grad_v += dv
    return grad_q, grad_k, grad_v


# ---------------------------------------------------------------------------------------------
# CUDA: flash-attn (optional)


def _flash_functions():
    """flash-attn's raw forward/backward when a version with the >= 2.6 keyword interface is installed."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn.flash_attn_interface import _flash_attn_backward, _flash_attn_forward
    except ImportError:
        return None
    wanted = {"window_size_left", "window_size_right", "softcap"}
    for function in (_flash_attn_forward, _flash_attn_backward):
        if not wanted <= set(inspect.signature(function).parameters):
            return None
    return _flash_attn_forward, _flash_attn_backward


def _flash_options(scale: float, mask: BlockMask) -> dict:
    """The keyword arguments flash-attn's forward and backward share: no dropout, window or softcap."""
    return {
        "dropout_p": 0.0,
        "softmax_scale": scale,
        "causal": mask.kind == "causal",
        "window_size_left": -1,
        "window_size_right": -1,
        "softcap": 0.0,
        "alibi_slopes": None,
    }


def _flash_forward(q, k, v, scale, mask: BlockMask):
    forward, _ = _flash_functions()
    # flash-attn works on (b, s, h, d)
    out, lse, *_ = forward(
        q.transpose(1, 2).contiguous(),
        k.transpose(1, 2).contiguous(),
        v.transpose(1, 2).contiguous(),
        **_flash_options(scale, mask),
        return_softmax=False,
    )
    return out.transpose(1, 2).float(), lse.float()


def _flash_backward(grad_out, q, k, v, out, lse, scale, mask: BlockMask):
    _, backward = _flash_functions()
    q4, k4, v4 = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    grad_q, grad_k, grad_v = torch.empty_like(q4), torch.empty_like(k4), torch.empty_like(v4)
    backward(
        grad_out.to(q.dtype).transpose(1, 2).contiguous(),
        q4,
        k4,
        v4,
        out.to(q.dtype).transpose(1, 2).contiguous(),
        lse.float().contiguous(),
        grad_q,
        grad_k,
        grad_v,
        **_flash_options(scale, mask),
        deterministic=True,
        rng_state=None,
    )
    return (g.transpose(1, 2).float() for g in (grad_q, grad_k, grad_v))


@functools.cache
def flash_attn_verified(device_index: int) -> bool:
    """Use flash-attn only once it reproduces the math path here (its private API moves between versions)."""
    if _flash_functions() is None:
        return False
    device = torch.device("cuda", device_index)
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v, grad = (
        torch.randn(1, 2, 128, 64, device=device, generator=generator, dtype=torch.bfloat16) for _ in range(4)
    )
    try:
        for mask in (FULL, CAUSAL):
            got = _flash_forward(q, k, v, 0.125, mask)
            want = _math_forward(q, k, v, 0.125, mask)
            got_grads = _flash_backward(grad, q, k, v, want[0], want[1], 0.125, mask)
            want_grads = _math_backward(grad, q, k, v, want[0], want[1], 0.125, mask)
            for a, b in zip([*got, *got_grads], [*want, *want_grads]):
                if not torch.allclose(a, b, atol=3e-2, rtol=3e-2):
                    raise AssertionError("flash-attn disagrees with the math path")
    except (AssertionError, RuntimeError, TypeError) as error:
        logger.warning("flash-attn kernels not used for ring attention: %s", error)
        return False
    return True


def _backend(q: torch.Tensor, mask: BlockMask) -> str:
    if q.device.type == "cpu":
        return "cpu"
    if (
        q.device.type == "cuda"
        and mask.kind != "custom"
        and q.dtype in (torch.float16, torch.bfloat16)
        and flash_attn_verified(q.device.index or 0)
    ):
        return "flash"
    return "math"


_FORWARD = {"cpu": _cpu_forward, "flash": _flash_forward, "math": _math_forward}
_BACKWARD = {"cpu": _cpu_backward, "flash": _flash_backward, "math": _math_backward}


def block_forward(q, k, v, scale: float, mask: BlockMask) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, lse) of q (b, h, sq, d) over one key block (b, h, sk, d), both in the accumulation
    dtype; a row that may see no key gets output 0 and lse -inf."""
    return _FORWARD[_backend(q, mask)](q, k, v, scale, mask)


def block_backward(grad_out, q, k, v, out, lse, scale: float, mask: BlockMask):
    """(dq, dk, dv) of one block, in the accumulation dtype, from the final (merged) out and lse."""
    return tuple(_BACKWARD[_backend(q, mask)](grad_out, q, k, v, out, lse, scale, mask))

"""Kernels that run anywhere: the pure-torch reference and ATen's fused CPU flash kernel.

Both are "dense" kernels (one batched call over whole rows); a varlen call with several problems
per row runs them problem by problem over the host bounds, so no device tensor is ever read.
GQA is native in both: the reference groups query heads over their shared KV head, and the CPU
flash kernel accepts fewer KV heads itself. Neither copies K/V per query head.
"""

from __future__ import annotations

import torch

from .varlen import Sequences

# Query rows per tile of the reference path: scores exist one (tile x keys) slab at a time.
QUERY_TILE = 256


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half types and fp32 (the contract), fp64 kept when given (strict tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def band_tiles(queries: int, keys: int, causal: bool, window: int, device=None, tile: int = 0):
    """(query slice, key slice, visible mask or None) per tile of queries of one problem.

    Visibility follows flash-attention's convention (Dao 2023), aligned at the bottom right: query i
    sits at diagonal i + keys - queries; `causal` hides keys after the diagonal and `window` >= 0
    hides keys more than `window` before it (transformers' `sliding_window` W is window W - 1). The
    key slice of a tile spans only the keys some query of the tile sees, so a windowed call costs
    O(queries x (tile + window)), never queries x keys. The mask is None when every key is visible.
    """
    tile = tile or QUERY_TILE
    shift = keys - queries
    for start in range(0, queries, tile):
        rows = slice(start, min(start + tile, queries))
        low = max(0, rows.start + shift - window) if window >= 0 else 0
        high = min(keys, rows.stop + shift) if causal else keys
        if high <= low:
            yield rows, slice(low, low), None
            continue
        # Decided from the bounds alone: no device data is read.
        hides_later = causal and high - 1 > rows.start + shift
        hides_earlier = window >= 0 and low < rows.stop - 1 + shift - window
        if not (hides_later or hides_earlier):
            yield rows, slice(low, high), None
            continue
        diagonal = torch.arange(rows.start + shift, rows.stop + shift, device=device)[:, None]
        at = torch.arange(low, high, device=device)[None, :]
        visible = torch.ones(rows.stop - rows.start, high - low, dtype=torch.bool, device=device)
        if hides_later:
            visible &= at <= diagonal
        if hides_earlier:
            visible &= at >= diagonal - window
        yield rows, slice(low, high), visible


def _grouped(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(b, h, s, d) -> (b, kv, h/kv, s, d): the query heads that share one KV head side by side."""
    b, h, s, d = x.shape
    return x.reshape(b, kv_heads, h // kv_heads, s, d)


def _capped_scores(q_rows, keys, scale, softcap, visible):
    """Scores of a tile: scaled, soft-capped (Gemma 2: cap * tanh(s / cap)), masked; and the raw tanh."""
    scores = torch.matmul(q_rows, keys.transpose(-1, -2)) * scale
    squashed = None
    if softcap:
        squashed = torch.tanh(scores / softcap)
        scores = squashed * softcap
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores, squashed


def _reference_dense_forward(q, k, v, scale, causal, window=-1, softcap=0.0):
    acc = accumulation_dtype(q)
    b, h, sq, d = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    qg = _grouped(q, kv_heads).to(acc)
    kf, vf = k.to(acc).unsqueeze(2), v.to(acc).unsqueeze(2)
    out = torch.zeros(qg.shape, dtype=acc, device=q.device)
    lse = torch.full(qg.shape[:-1], float("-inf"), dtype=acc, device=q.device)
    for rows, span, visible in band_tiles(sq, keys, causal, window, q.device):
        if span.stop == span.start:
            continue
        scores, _ = _capped_scores(qg[..., rows, :], kf[..., span, :], scale, softcap, visible)
        tile_lse = torch.logsumexp(scores, dim=-1)
        lse[..., rows] = tile_lse
        probs = torch.exp(scores - tile_lse.unsqueeze(-1)).nan_to_num(0.0)
        out[..., rows, :] = torch.matmul(probs, vf[..., span, :])
    return out.reshape(b, h, sq, d), lse.reshape(b, h, sq)


def _reference_dense_backward(grad_out, q, k, v, out, lse, scale, causal, window=-1, softcap=0.0):
    acc = accumulation_dtype(q)
    b, h, sq, d = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    qg = _grouped(q, kv_heads).to(acc)
    grad = _grouped(grad_out, kv_heads).to(acc)
    kf, vf = k.to(acc).unsqueeze(2), v.to(acc).unsqueeze(2)
    lse = lse.reshape(qg.shape[:-1]).to(acc)
    delta = (grad * _grouped(out, kv_heads).to(acc)).sum(dim=-1, keepdim=True)
    grad_q = torch.zeros(qg.shape, dtype=acc, device=q.device)
    grad_k = torch.zeros(k.shape, dtype=acc, device=q.device)
    grad_v = torch.zeros(k.shape, dtype=acc, device=q.device)
    for rows, span, visible in band_tiles(sq, keys, causal, window, q.device):
        if span.stop == span.start:
            continue
        q_rows, grad_rows = qg[..., rows, :], grad[..., rows, :]
        k_span, v_span = kf[..., span, :], vf[..., span, :]
        scores, squashed = _capped_scores(q_rows, k_span, scale, softcap, visible)
        probs = torch.exp(scores - lse[..., rows].unsqueeze(-1)).nan_to_num(0.0)
        grad_v[..., span, :] += torch.matmul(probs.transpose(-1, -2), grad_rows).sum(dim=2)
        grad_scores = probs * (torch.matmul(grad_rows, v_span.transpose(-1, -2)) - delta[..., rows, :])
        if squashed is not None:
            grad_scores = grad_scores * (1 - squashed.square())  # d(cap * tanh(s / cap)) / ds
        grad_q[..., rows, :] = torch.matmul(grad_scores, k_span) * scale
        grad_k[..., span, :] += torch.matmul(grad_scores.transpose(-1, -2), q_rows).sum(dim=2) * scale
    return grad_q.reshape(b, h, sq, d), grad_k, grad_v


def _cpu_dense_forward(q, k, v, scale, causal, window=-1, softcap=0.0):
    if softcap:  # ATen's CPU kernel has no soft-capping
        return _reference_dense_forward(q, k, v, scale, causal, window, softcap)
    if window >= 0:
        return _cpu_banded_forward(q, k, v, scale, causal, window)
    acc = accumulation_dtype(q)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return kernel(q.to(acc), k.to(acc), v.to(acc), 0.0, causal, scale=scale)


def _cpu_dense_backward(grad_out, q, k, v, out, lse, scale, causal, window=-1, softcap=0.0):
    if softcap:
        return _reference_dense_backward(grad_out, q, k, v, out, lse, scale, causal, window, softcap)
    if window >= 0:
        return _cpu_banded_backward(grad_out, q, k, v, out, lse, scale, causal, window)
    acc = accumulation_dtype(q)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    return kernel(
        grad_out.to(acc).contiguous(),
        q.to(acc),
        k.to(acc),
        v.to(acc),
        out.to(acc).contiguous(),
        lse.to(acc).contiguous(),
        0.0,
        causal,
        scale=scale,
    )


def _additive(visible: torch.Tensor | None, dtype) -> torch.Tensor | None:
    if visible is None:
        return None
    zeros = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return zeros.masked_fill(~visible, float("-inf"))[None, None]


def _cpu_banded_forward(q, k, v, scale, causal, window):
    """A sliding window on ATen's CPU kernel: one masked call per query tile over the keys it sees."""
    acc = accumulation_dtype(q)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
    for rows, span, visible in band_tiles(q.shape[2], k.shape[2], causal, window, q.device):
        if span.stop == span.start:
            continue
        tile_out, tile_lse = _cpu_masked_forward(
            q[:, :, rows], k[:, :, span], v[:, :, span], scale, _additive(visible, acc)
        )[:2]
        out[:, :, rows] = tile_out
        lse[:, :, rows] = tile_lse
    return out, lse


def _cpu_banded_backward(grad_out, q, k, v, out, lse, scale, causal, window):
    acc = accumulation_dtype(q)
    grad_q = torch.zeros(q.shape, dtype=acc, device=q.device)
    grad_k = torch.zeros(k.shape, dtype=acc, device=q.device)
    grad_v = torch.zeros(k.shape, dtype=acc, device=q.device)
    for rows, span, visible in band_tiles(q.shape[2], k.shape[2], causal, window, q.device):
        if span.stop == span.start:
            continue
        dq, dk, dv = _cpu_masked_backward(
            grad_out[:, :, rows],
            q[:, :, rows],
            k[:, :, span],
            v[:, :, span],
            out[:, :, rows],
            lse[:, :, rows],
            scale,
            _additive(visible, acc),
        )
        grad_q[:, :, rows] = dq
        grad_k[:, :, span] += dk
        grad_v[:, :, span] += dv
    return grad_q, grad_k, grad_v


def _cpu_masked_forward(q, k, v, scale, mask):
    acc = accumulation_dtype(q)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return kernel(q.to(acc), k.to(acc), v.to(acc), 0.0, False, attn_mask=mask, scale=scale)


def _cpu_masked_backward(grad_out, q, k, v, out, lse, scale, mask):
    acc = accumulation_dtype(q)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    return kernel(
        grad_out.to(acc).contiguous(),
        q.to(acc),
        k.to(acc),
        v.to(acc),
        out.to(acc).contiguous(),
        lse.to(acc).contiguous(),
        0.0,
        False,
        attn_mask=mask,
        scale=scale,
    )


class DenseBackend:
    """A dense kernel pair, run once for uniform calls and problem by problem otherwise."""

    def __init__(self, name: str, forward, backward):
        self.name, self._forward, self._backward = name, forward, backward

    def forward(
        self,
        q,
        k,
        v,
        scale: float,
        causal: bool,
        sequences: Sequences,
        window: int = -1,
        softcap: float = 0.0,
    ):
        if sequences.uniform:
            return self._forward(q, k, v, scale, causal, window, softcap)
        acc = accumulation_dtype(q)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
        for row, qs, ks in sequences.problems(q.shape[2], k.shape[2]):
            here = slice(row, row + 1)
            piece_out, piece_lse = self._forward(
                q[here, :, qs], k[here, :, ks], v[here, :, ks], scale, causal, window, softcap
            )
            out[here, :, qs] = piece_out
            lse[here, :, qs] = piece_lse
        return out, lse

    def backward(
        self,
        grad_out,
        q,
        k,
        v,
        out,
        lse,
        scale: float,
        causal: bool,
        sequences: Sequences,
        window: int = -1,
        softcap: float = 0.0,
    ):
        if sequences.uniform:
            return self._backward(grad_out, q, k, v, out, lse, scale, causal, window, softcap)
        acc = accumulation_dtype(q)
        grad_q = torch.zeros(q.shape, dtype=acc, device=q.device)
        grad_k = torch.zeros(k.shape, dtype=acc, device=q.device)
        grad_v = torch.zeros(k.shape, dtype=acc, device=q.device)
        for row, qs, ks in sequences.problems(q.shape[2], k.shape[2]):
            here = slice(row, row + 1)
            dq, dk, dv = self._backward(
                grad_out[here, :, qs],
                q[here, :, qs],
                k[here, :, ks],
                v[here, :, ks],
                out[here, :, qs],
                lse[here, :, qs],
                scale,
                causal,
                window,
                softcap,
            )
            grad_q[here, :, qs] = dq
            grad_k[here, :, ks] += dk
            grad_v[here, :, ks] += dv
        return grad_q, grad_k, grad_v


REFERENCE = DenseBackend("reference (pure torch, tiled)", _reference_dense_forward, _reference_dense_backward)
CPU_FLASH = DenseBackend(
    "torch CPU flash (aten._scaled_dot_product_flash_attention_for_cpu)",
    _cpu_dense_forward,
    _cpu_dense_backward,
)

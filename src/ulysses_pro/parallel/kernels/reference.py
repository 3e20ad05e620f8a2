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


def _tiles(length: int):
    for start in range(0, length, QUERY_TILE):
        yield slice(start, min(start + QUERY_TILE, length))


def _future(rows: slice, keys: int, device: torch.device) -> torch.Tensor:
    """(rows x keys) True where a key comes after its query (top-left aligned causal mask)."""
    query_at = torch.arange(rows.start, rows.stop, device=device)
    return torch.arange(keys, device=device)[None, :] > query_at[:, None]


def _grouped(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(b, h, s, d) -> (b, kv, h/kv, s, d): the query heads that share one KV head side by side."""
    b, h, s, d = x.shape
    return x.reshape(b, kv_heads, h // kv_heads, s, d)


def _reference_dense_forward(q, k, v, scale, causal):
    acc = accumulation_dtype(q)
    b, h, sq, d = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    qg = _grouped(q, kv_heads).to(acc)
    kf, vf = k.to(acc).unsqueeze(2), v.to(acc).unsqueeze(2)
    out = torch.zeros(qg.shape, dtype=acc, device=q.device)
    lse = torch.full(qg.shape[:-1], float("-inf"), dtype=acc, device=q.device)
    for rows in _tiles(sq):
        scores = torch.matmul(qg[..., rows, :], kf.transpose(-1, -2)) * scale
        if causal:
            scores = scores.masked_fill(_future(rows, keys, q.device), float("-inf"))
        tile_lse = torch.logsumexp(scores, dim=-1)
        lse[..., rows] = tile_lse
        probs = torch.exp(scores - tile_lse.unsqueeze(-1)).nan_to_num(0.0)
        out[..., rows, :] = torch.matmul(probs, vf)
    return out.reshape(b, h, sq, d), lse.reshape(b, h, sq)


def _reference_dense_backward(grad_out, q, k, v, out, lse, scale, causal):
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
    for rows in _tiles(sq):
        q_rows, grad_rows = qg[..., rows, :], grad[..., rows, :]
        scores = torch.matmul(q_rows, kf.transpose(-1, -2)) * scale
        probs = torch.exp(scores - lse[..., rows].unsqueeze(-1))
        if causal:
            probs = probs.masked_fill(_future(rows, keys, q.device), 0.0)
        probs = probs.nan_to_num(0.0)
        grad_v += torch.matmul(probs.transpose(-1, -2), grad_rows).sum(dim=2)
        grad_scores = probs * (torch.matmul(grad_rows, vf.transpose(-1, -2)) - delta[..., rows, :])
        grad_q[..., rows, :] = torch.matmul(grad_scores, kf) * scale
        grad_k += torch.matmul(grad_scores.transpose(-1, -2), q_rows).sum(dim=2) * scale
    return grad_q.reshape(b, h, sq, d), grad_k, grad_v


def _cpu_dense_forward(q, k, v, scale, causal):
    acc = accumulation_dtype(q)
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return kernel(q.to(acc), k.to(acc), v.to(acc), 0.0, causal, scale=scale)


def _cpu_dense_backward(grad_out, q, k, v, out, lse, scale, causal):
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


# Below this many (batch x queries x keys) elements a varlen call on the CPU is one masked kernel
# call (the mask is built once per forward) instead of one call per document.
MASKED_CALL_LIMIT = 1 << 22


class DenseBackend:
    """A dense kernel pair, run once for uniform calls and problem by problem otherwise (or, with a
    masked pair, as one masked call when the mask is small)."""

    def __init__(self, name: str, forward, backward, masked=None):
        self.name, self._forward, self._backward = name, forward, backward
        self._masked = masked

    def _mask(self, q, k, causal, sequences):
        if self._masked is None or q.shape[0] * q.shape[2] * k.shape[2] > MASKED_CALL_LIMIT:
            return None
        return sequences.additive_mask(
            q.shape[0], q.shape[2], k.shape[2], causal, accumulation_dtype(q), q.device
        )

    def forward(self, q, k, v, scale: float, causal: bool, sequences: Sequences):
        if sequences.uniform:
            return self._forward(q, k, v, scale, causal)
        mask = self._mask(q, k, causal, sequences)
        if mask is not None:
            return self._masked[0](q, k, v, scale, mask)
        acc = accumulation_dtype(q)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
        for row, qs, ks in sequences.problems(q.shape[2], k.shape[2]):
            here = slice(row, row + 1)
            piece_out, piece_lse = self._forward(
                q[here, :, qs], k[here, :, ks], v[here, :, ks], scale, causal
            )
            out[here, :, qs] = piece_out
            lse[here, :, qs] = piece_lse
        return out, lse

    def backward(self, grad_out, q, k, v, out, lse, scale: float, causal: bool, sequences: Sequences):
        if sequences.uniform:
            return self._backward(grad_out, q, k, v, out, lse, scale, causal)
        mask = self._mask(q, k, causal, sequences)
        if mask is not None:
            return self._masked[1](grad_out, q, k, v, out, lse, scale, mask)
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

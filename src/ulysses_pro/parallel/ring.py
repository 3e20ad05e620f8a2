"""Exact blockwise (zigzag) ring attention with a log-sum-exp merge, forward and backward.

Each rank keeps its queries and passes key/value blocks around the ring. Block results are merged
in fp32 with their log-sum-exp (the online-softmax identity of Milakov & Gimelshein 2018, used by
Liu et al. 2023 "Ring Attention with Blockwise Transformers"); the backward recomputes each block's
probabilities from the final log-sum-exp, as FlashAttention-2 does (Dao 2023), and sends the key /
value gradient accumulators around the ring with their blocks until they are home.

Masks come from token metadata rather than from block order, so causal, packed-document and
zigzag layouts are all exact: token i may attend to token j iff they share a document and
index(j) <= index(i) in the full sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .comm import ring_shift


@dataclass(frozen=True)
class RingPeers:
    """The ring this rank sits in: its position and its neighbours' global ranks."""

    size: int
    rank: int
    send_to: int
    receive_from: int
    group: dist.ProcessGroup | None


def allowed_mask(q_index, q_segments, k_index, k_segments) -> torch.Tensor:
    """(b, 1, sq, sk) boolean mask: same document and causal in global token order."""
    same_document = q_segments[:, :, None] == k_segments[:, None, :]
    causal = k_index[None, None, :] <= q_index[None, :, None]
    return (same_document & causal).unsqueeze(1)


def _expand(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


def _fold(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum the gradient of replicated KV heads back onto the original heads."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x.view(b, h // groups, groups, s, d).sum(dim=2)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half types and fp32 (the contract), fp64 kept when given (strict tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def block_attention(q, k, v, allowed, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (output, log-sum-exp) of q over one key block; rows with no allowed key get lse=-inf."""
    acc = accumulation_dtype(q)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return torch.matmul(probs, v.to(acc)), lse


def merge(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax results by their log-sum-exp (exact)."""
    new_lse = torch.logaddexp(lse, block_lse)
    old_weight = torch.exp(lse - new_lse).nan_to_num(0.0).unsqueeze(-1)
    new_weight = torch.exp(block_lse - new_lse).nan_to_num(0.0).unsqueeze(-1)
    return out * old_weight + block_out * new_weight, new_lse


# Query rows per tile: block scores are materialised one (tile x block) slab at a time, so a
# block's temporaries stay O(tile x block) instead of O(block^2).
QUERY_TILE = 256


def _tiles(length: int):
    for start in range(0, length, QUERY_TILE):
        yield slice(start, min(start + QUERY_TILE, length))


def _block_forward(q, k, v, q_index, q_segments, k_index, k_segments, scale, out, lse):
    """Merge one key block into (out, lse), tile by tile; returns the updated pair."""
    for rows in _tiles(q.shape[2]):
        allowed = allowed_mask(q_index[rows], q_segments[:, rows], k_index, k_segments)
        if allowed.any():
            partial = block_attention(q[:, :, rows], k, v, allowed, scale)
            out[:, :, rows], lse[:, :, rows] = merge(out[:, :, rows], lse[:, :, rows], *partial)
    return out, lse


def _block_backward(q, k, v, grad_out, delta, lse, q_index, q_segments, k_index, k_segments, scale):
    """(dq, dk, dv) of one key block for all local queries, tile by tile (k, v already expanded)."""
    grad_q = torch.zeros_like(q)
    grad_k = torch.zeros_like(k)
    grad_v = torch.zeros_like(v)
    for rows in _tiles(q.shape[2]):
        allowed = allowed_mask(q_index[rows], q_segments[:, rows], k_index, k_segments)
        if not allowed.any():
            continue
        q_rows, grad_rows = q[:, :, rows], grad_out[:, :, rows]
        scores = torch.matmul(q_rows, k.transpose(-1, -2)) * scale
        probs = torch.exp(scores - lse[:, :, rows].unsqueeze(-1)).masked_fill(~allowed, 0.0).nan_to_num(0.0)
        grad_v += torch.matmul(probs.transpose(-1, -2), grad_rows)
        grad_scores = probs * (torch.matmul(grad_rows, v.transpose(-1, -2)) - delta[:, :, rows])
        grad_q[:, :, rows] = torch.matmul(grad_scores, k) * scale
        grad_k += torch.matmul(grad_scores.transpose(-1, -2), q_rows) * scale
    return grad_q, grad_k, grad_v


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, peers, index_of, q_index, segments):
        groups = q.shape[1] // k.shape[1]
        acc = accumulation_dtype(q)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
        q_segments = segments[:, q_index]
        block_k, block_v = k, v
        for step in range(peers.size):
            k_index = index_of((peers.rank - step) % peers.size)
            out, lse = _block_forward(
                q.to(acc),
                _expand(block_k, groups).to(acc),
                _expand(block_v, groups).to(acc),
                q_index,
                q_segments,
                k_index,
                segments[:, k_index],
                scale,
                out,
                lse,
            )
            if step < peers.size - 1:
                block_k, block_v = ring_shift(
                    [block_k, block_v], peers.send_to, peers.receive_from, peers.group
                )
        ctx.save_for_backward(q, k, v, out, lse, q_index, segments)
        ctx.scale, ctx.peers, ctx.index_of = scale, peers, index_of
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, q_index, segments = ctx.saved_tensors
        peers, scale = ctx.peers, ctx.scale
        groups = q.shape[1] // k.shape[1]
        acc = accumulation_dtype(q)
        grad_out = grad_out.to(acc)
        qf = q.to(acc)
        delta = (grad_out * out).sum(dim=-1, keepdim=True)
        q_segments = segments[:, q_index]
        grad_q = torch.zeros_like(qf)
        block_k, block_v = k, v
        grad_k = torch.zeros(k.shape, dtype=acc, device=k.device)
        grad_v = torch.zeros_like(grad_k)
        for step in range(peers.size):
            k_index = ctx.index_of((peers.rank - step) % peers.size)
            dq, dk, dv = _block_backward(
                qf,
                _expand(block_k, groups).to(acc),
                _expand(block_v, groups).to(acc),
                grad_out,
                delta,
                lse,
                q_index,
                q_segments,
                k_index,
                segments[:, k_index],
                scale,
            )
            grad_q += dq
            grad_k = grad_k + _fold(dk, groups)
            grad_v = grad_v + _fold(dv, groups)
            if peers.size > 1:
                # The gradient accumulators travel with their blocks; after `size` shifts they are home.
                moving = [grad_k, grad_v] if step == peers.size - 1 else [block_k, block_v, grad_k, grad_v]
                moved = ring_shift(moving, peers.send_to, peers.receive_from, peers.group)
                if step == peers.size - 1:
                    grad_k, grad_v = moved
                else:
                    block_k, block_v, grad_k, grad_v = moved
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    peers: RingPeers,
    index_of,
    segments: torch.Tensor,
) -> torch.Tensor:
    """Attention of local q (b, h, s, d) over the keys of every ring rank.

    `index_of(ring_rank)` gives the global token indices a ring rank holds; `segments` (b, S) is the
    document id of every token of the full sequence. k, v may have fewer (GQA) heads than q.
    """
    return _RingAttention.apply(q, k, v, scale, peers, index_of, index_of(peers.rank), segments)

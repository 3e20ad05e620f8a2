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
from .kernels import CAUSAL, FULL, BlockMask, accumulation_dtype, block_backward, block_forward


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


def contiguous_runs(index: torch.Tensor) -> list[slice]:
    """Positions of `index` split where the token indices stop stepping by one (zigzag: two runs)."""
    breaks = (torch.nonzero(index[1:] - index[:-1] != 1).flatten() + 1).tolist()
    edges = [0, *breaks, index.numel()]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def plan_block(q_index, q_segments, k_index, k_segments) -> list[tuple[slice, slice, BlockMask]]:
    """The (query run, key run, mask) pieces of one ring block that hold any allowed pair.

    Contiguous runs within one document need no explicit mask: keys wholly before the queries are
    fully visible, the same run is plain causal. Everything else (several documents, padding)
    gets a mask built tile by tile from the token metadata.
    """
    pieces = []
    for q_run in contiguous_runs(q_index):
        q_first, q_last = int(q_index[q_run.start]), int(q_index[q_run.stop - 1])
        q_seg = q_segments[:, q_run]
        for k_run in contiguous_runs(k_index):
            k_first, k_last = int(k_index[k_run.start]), int(k_index[k_run.stop - 1])
            if k_first > q_last:
                continue  # every key comes after every query
            k_seg = k_segments[:, k_run]
            document = q_seg[:, :1]
            one_document = bool((q_seg == document).all()) and bool((k_seg == document).all())
            if one_document and k_last < q_first:
                pieces.append((q_run, k_run, FULL))
            elif one_document and (q_first, q_last) == (k_first, k_last):
                pieces.append((q_run, k_run, CAUSAL))
            else:

                def allowed(rows, q_run=q_run, k_run=k_run, q_seg=q_seg, k_seg=k_seg):
                    q_at = q_index[q_run][rows]
                    return allowed_mask(q_at, q_seg[:, rows], k_index[k_run], k_seg)

                pieces.append((q_run, k_run, BlockMask("custom", allowed)))
    return pieces


def merge(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax results by their log-sum-exp (exact)."""
    new_lse = torch.logaddexp(lse, block_lse)
    old_weight = torch.exp(lse - new_lse).nan_to_num(0.0).unsqueeze(-1)
    new_weight = torch.exp(block_lse - new_lse).nan_to_num(0.0).unsqueeze(-1)
    return out * old_weight + block_out * new_weight, new_lse


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, peers, index_of, q_index, segments):
        groups = q.shape[1] // k.shape[1]
        acc = accumulation_dtype(q)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
        q_segments = segments[:, q_index]
        plans = []
        block_k, block_v = k, v
        for step in range(peers.size):
            k_index = index_of((peers.rank - step) % peers.size)
            plan = plan_block(q_index, q_segments, k_index, segments[:, k_index])
            plans.append(plan)
            wide_k, wide_v = _expand(block_k, groups), _expand(block_v, groups)
            for q_run, k_run, mask in plan:
                partial = block_forward(q[:, :, q_run], wide_k[:, :, k_run], wide_v[:, :, k_run], scale, mask)
                out[:, :, q_run], lse[:, :, q_run] = merge(out[:, :, q_run], lse[:, :, q_run], *partial)
            if step < peers.size - 1:
                block_k, block_v = ring_shift(
                    [block_k, block_v], peers.send_to, peers.receive_from, peers.group
                )
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.peers, ctx.plans = scale, peers, plans
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        peers, scale = ctx.peers, ctx.scale
        groups = q.shape[1] // k.shape[1]
        acc = accumulation_dtype(q)
        grad_q = torch.zeros(q.shape, dtype=acc, device=q.device)
        block_k, block_v = k, v
        grad_k = torch.zeros(k.shape, dtype=acc, device=k.device)
        grad_v = torch.zeros_like(grad_k)
        for step in range(peers.size):
            wide_k, wide_v = _expand(block_k, groups), _expand(block_v, groups)
            wide_grad_k = torch.zeros(wide_k.shape, dtype=acc, device=k.device)
            wide_grad_v = torch.zeros_like(wide_grad_k)
            for q_run, k_run, mask in ctx.plans[step]:
                dq, dk, dv = block_backward(
                    grad_out[:, :, q_run],
                    q[:, :, q_run],
                    wide_k[:, :, k_run],
                    wide_v[:, :, k_run],
                    out[:, :, q_run],
                    lse[:, :, q_run],
                    scale,
                    mask,
                )
                grad_q[:, :, q_run] += dq
                wide_grad_k[:, :, k_run] += dk
                wide_grad_v[:, :, k_run] += dv
            grad_k = grad_k + _fold(wide_grad_k, groups)
            grad_v = grad_v + _fold(wide_grad_v, groups)
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

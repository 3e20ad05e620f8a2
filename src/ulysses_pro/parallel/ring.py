"""Exact blockwise (zigzag) ring attention with a log-sum-exp merge, forward and backward.

Each rank keeps its queries and fetches the key/value blocks of the other ring ranks. Block results are merged
in fp32 with their log-sum-exp (the online-softmax identity of Milakov & Gimelshein 2018, used by
Liu et al. 2023 "Ring Attention with Blockwise Transformers"); the backward recomputes each block's
probabilities from the final log-sum-exp, as FlashAttention-2 does (Dao 2023), and sends each
fetched block's key / value gradients back to its owner.

Step s works on the block of ring rank (rank - s): every rank sends its own block to (rank + s) and
receives from (rank - s), so the steps the plan leaves out (offsets whose blocks no query's sliding
window reaches, on any rank) cost no communication either; with a window shorter than a block,
zigzag ranks only exchange with their two neighbours. The next block's send/receive is posted
before the current block is computed, and a block's gradients travel home while the next step
computes; what each step computes comes from the per-forward `AttentionPlan`, so no layer syncs
the host. Autocast is switched off inside: the kernels pick their own precision (half
inputs, fp32 log-sum-exp and merge), identically in forward and backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .comm import start_ring_shift
from .kernels import accumulation_dtype, block_backward, block_forward
from .plan import AttentionPlan

RING_PATH = "ring attention blocks"
LOCAL_PATH = "local attention (whole sequence on this rank)"


@dataclass(frozen=True)
class RingPeers:
    """The ring this rank sits in: its position and the global rank of every ring rank."""

    size: int
    rank: int
    members: tuple[int, ...]
    group: dist.ProcessGroup | None

    def exchange(self, offset: int) -> tuple[int, int]:
        """(send to, receive from) for step `offset`: this rank's block goes `offset` ranks ahead,
        the block of the rank `offset` behind comes in (a negative offset sends gradients home)."""
        return self.members[(self.rank + offset) % self.size], self.members[(self.rank - offset) % self.size]


def merge(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax results by their log-sum-exp (exact)."""
    new_lse = torch.logaddexp(lse, block_lse)
    old_weight = torch.exp(lse - new_lse).nan_to_num(0.0).unsqueeze(-1)
    new_weight = torch.exp(block_lse - new_lse).nan_to_num(0.0).unsqueeze(-1)
    return out * old_weight + block_out * new_weight, new_lse


def _sequence_major_zeros(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Zeros shaped like `like` (b, h, s, d) whose memory is (b, s, h, d): what kernels and the ring want."""
    b, h, s, d = like.shape
    return torch.zeros((b, s, h, d), dtype=dtype, device=like.device).transpose(1, 2)


def _exchange(tensors, peers: RingPeers, offset: int):
    send_to, receive_from = peers.exchange(offset)
    return start_ring_shift(tensors, send_to, receive_from, peers.group)


def _part(x: torch.Tensor, rows: slice, positions: slice) -> torch.Tensor:
    """The (rows, all heads, positions) view of a (b, h, s[, d]) tensor (narrow: a view on any device)."""
    x = x.narrow(0, rows.start, rows.stop - rows.start)
    return x.narrow(2, positions.start, positions.stop - positions.start)


def _piece_inputs(piece, q, k, v):
    return _part(q, piece.rows, piece.q), _part(k, piece.rows, piece.k), _part(v, piece.rows, piece.k)


def _forward(q, k, v, scale, softcap, peers: RingPeers | None, plan: AttentionPlan):
    whole = plan.whole
    if whole is not None:
        return block_forward(
            q,
            k,
            v,
            scale,
            whole.causal,
            whole.sequences,
            window=whole.window,
            softcap=softcap,
            path=LOCAL_PATH,
        )
    acc = accumulation_dtype(q)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc, device=q.device)
    block_k, block_v = k, v  # offset 0: this rank's own block
    path = RING_PATH if peers is not None else LOCAL_PATH
    offsets = plan.offsets
    for step, pieces in enumerate(plan.steps):
        pending = _exchange([k, v], peers, offsets[step + 1]) if step + 1 < len(offsets) else None
        for piece in pieces:
            partial = block_forward(
                *_piece_inputs(piece, q, block_k, block_v),
                scale,
                piece.causal,
                piece.sequences,
                window=piece.window,
                softcap=softcap,
                path=path,
            )
            out_here, lse_here = _part(out, piece.rows, piece.q), _part(lse, piece.rows, piece.q)
            merged_out, merged_lse = merge(out_here, lse_here, partial[0].to(acc), partial[1].to(acc))
            out_here.copy_(merged_out)
            lse_here.copy_(merged_lse)
        if pending is not None:
            block_k, block_v = pending.wait()
    return out, lse


def _backward(grad_out, q, k, v, out, lse, scale, softcap, peers: RingPeers | None, plan: AttentionPlan):
    whole = plan.whole
    if whole is not None:
        return block_backward(
            grad_out,
            q,
            k,
            v,
            out,
            lse,
            scale,
            whole.causal,
            whole.sequences,
            window=whole.window,
            softcap=softcap,
        )
    acc = accumulation_dtype(q)
    grad_q = torch.zeros(q.shape, dtype=acc, device=q.device)
    grad_k, grad_v = _sequence_major_zeros(k, acc), _sequence_major_zeros(v, acc)  # this rank's block
    block_k, block_v = k, v
    returning = None  # the previous step's gradients, on their way home
    offsets = plan.offsets
    for step, pieces in enumerate(plan.steps):
        offset = offsets[step]
        pending_kv = _exchange([k, v], peers, offsets[step + 1]) if step + 1 < len(offsets) else None
        if offset == 0:
            step_k, step_v = grad_k, grad_v
        else:
            step_k, step_v = _sequence_major_zeros(k, acc), _sequence_major_zeros(v, acc)
        for piece in pieces:
            rows = piece.rows
            dq, dk, dv = block_backward(
                _part(grad_out, rows, piece.q),
                *_piece_inputs(piece, q, block_k, block_v),
                _part(out, rows, piece.q),
                _part(lse, rows, piece.q),
                scale,
                piece.causal,
                piece.sequences,
                window=piece.window,
                softcap=softcap,
            )
            _part(grad_q, rows, piece.q).add_(dq)
            _part(step_k, rows, piece.k).add_(dk)
            _part(step_v, rows, piece.k).add_(dv)
        if returning is not None:
            # Gradients of this rank's block from the rank that held it last step.
            home_k, home_v = returning.wait()
            grad_k.add_(home_k)
            grad_v.add_(home_v)
            returning = None
        if offset != 0:
            # This block's gradients go back to its owner while the next step computes.
            returning = _exchange([step_k, step_v], peers, -offset)
        if pending_kv is not None:
            block_k, block_v = pending_kv.wait()
    if returning is not None:
        home_k, home_v = returning.wait()
        grad_k.add_(home_k)
        grad_v.add_(home_v)
    return grad_q, grad_k, grad_v


def _no_autocast(device_type: str):
    """Autocast off for this device (meta tensors, e.g. the planner's trace, have no autocast)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _join_sinks(out, lse, sinks):
    """Merge each head's sink (a key with score `sinks[h]` and a zero value, GPT-OSS) into the final
    result: it joins the softmax denominator once, after every block."""
    acc = lse.dtype
    sink_lse = sinks.to(acc)[None, :, None].expand_as(lse)
    return merge(out.to(acc), lse, torch.zeros_like(out, dtype=acc), sink_lse)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, softcap, peers, plan, sinks):
        with _no_autocast(q.device.type):
            out, lse = _forward(q, k, v, scale, softcap, peers, plan)
            if sinks is not None:
                out, lse = _join_sinks(out, lse, sinks)
        out = out.to(q.dtype)
        # The output is saved in the input precision (as flash-attn's own autograd does); the
        # log-sum-exp stays fp32. With sinks both include the sink: FlashAttention-2's backward
        # with the sink-inclusive output and log-sum-exp is the gradient of the sink-inclusive softmax.
        ctx.save_for_backward(q, k, v, out, lse, sinks)
        ctx.scale, ctx.softcap, ctx.peers, ctx.plan = scale, softcap, peers, plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, sinks = ctx.saved_tensors
        with _no_autocast(q.device.type):
            grad_q, grad_k, grad_v = _backward(
                grad_out, q, k, v, out, lse, ctx.scale, ctx.softcap, ctx.peers, ctx.plan
            )
            grad_sinks = None
            if sinks is not None:
                # The sink's score s gets P_sink * (dO . 0 - delta), delta = rowsum(dO * O), per query.
                acc = lse.dtype
                delta = (grad_out.to(acc) * out.to(acc)).sum(dim=-1)
                sink_probability = torch.exp(sinks.to(acc)[None, :, None] - lse)
                grad_sinks = -(sink_probability * delta).sum(dim=(0, 2)).to(sinks.dtype)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None, None, grad_sinks


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    peers: RingPeers | None,
    plan: AttentionPlan,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of this rank's queries q (b, h, s, d) over the keys of every ring rank (peers None:
    the whole sequence is local). k, v may have fewer (GQA) heads than q; they are never repeated.
    The plan carries the sliding window; `softcap` > 0 caps every score (the merge stays exact: each
    block's log-sum-exp is of its capped scores); `sinks` (h,) adds one zero-value key per head
    with that score to every query's softmax (attention sinks, GPT-OSS)."""
    if peers is None and plan.offsets != (0,):
        raise ValueError("the plan has ring steps but there is no ring")
    return _RingAttention.apply(q, k, v, scale, float(softcap or 0.0), peers, plan, sinks)

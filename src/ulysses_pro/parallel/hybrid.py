"""Ulysses x ring composition: the one attention entry point the model adapter calls.

Ulysses turns sequence shards into head shards of the ring-local sequence; ring attention covers
the other ring ranks' tokens (ring degree 1: the gathered sequence is complete and attention is one
local kernel call). What each step computes comes from the per-forward `AttentionPlan`.
"""

from __future__ import annotations

import torch

from .mesh import SequenceParallelLayout
from .plan import AttentionPlan, build_attention_plan
from .ring import RingPeers, ring_attention
from .ulysses import ulysses_attention


def ring_peers(layout: SequenceParallelLayout) -> RingPeers | None:
    """This rank's ring neighbours (None without a ring)."""
    if layout.ring_size == 1:
        return None
    return RingPeers(
        size=layout.ring_size,
        rank=layout.ring_rank,
        members=tuple(layout.ring_global_rank(ring_rank) for ring_rank in range(layout.ring_size)),
        group=layout.ring_group,
    )


def sequence_parallel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    position_ids: torch.Tensor | None,
    layout: SequenceParallelLayout,
    scale: float,
    plan: AttentionPlan | None = None,
    *,
    window: int | None = None,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact attention for sequence-sharded q (b, H, s, d), k/v (b, KV, s, d); returns (b, H, s, d).

    Give `plan` (built once per forward and window by `build_attention_plan`) or this shard's global
    `position_ids` (then the plan is built here for `window`, a collective over the SP group).
    `softcap` > 0 caps the scores as Gemma 2 does; `sinks` (H,) are per-head attention-sink scores
    (GPT-OSS), each rank applying those of the heads it holds."""
    if plan is None:
        if position_ids is None:
            raise ValueError("sequence_parallel_attention needs position_ids or a plan")
        plan = build_attention_plan(position_ids, layout, batch=q.shape[0], window=window)
    peers = ring_peers(layout)
    if sinks is not None and layout.ulysses_size > 1:
        heads = sinks.shape[0] // layout.ulysses_size
        sinks = sinks.narrow(0, layout.ulysses_rank * heads, heads)

    def attend(q_heads, k_heads, v_heads):
        return ring_attention(
            q_heads, k_heads, v_heads, scale=scale, peers=peers, plan=plan, softcap=softcap, sinks=sinks
        )

    return ulysses_attention(q, k, v, layout.ulysses_group, layout.ulysses_size, attend)

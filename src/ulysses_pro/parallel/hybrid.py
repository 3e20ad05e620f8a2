"""Ulysses x ring composition: the one attention entry point the model adapter calls.

Ulysses turns sequence shards into head shards of the ring-local sequence; ring attention (when
the ring degree is above 1) covers the other ring ranks' tokens; with ring degree 1 the gathered
sequence is complete and attention is computed locally with SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .comm import all_gather_sequence
from .mesh import SequenceParallelLayout
from .ring import RingPeers, allowed_mask, ring_attention
from .sharding import segment_ids, shard_indices
from .ulysses import ulysses_attention


def full_sequence_metadata(position_ids: torch.Tensor, layout: SequenceParallelLayout) -> torch.Tensor:
    """Document ids (b, S) of the whole sequence, from every SP rank's shard of position ids."""
    gathered = all_gather_sequence(position_ids, layout.sp_group)  # (b, S) in sp-rank order
    local = position_ids.shape[1]
    length = local * layout.sp_size
    full = torch.empty_like(gathered)
    for sp_rank in range(layout.sp_size):
        index = shard_indices(
            length,
            layout.ulysses_size,
            layout.ring_size,
            sp_rank % layout.ulysses_size,
            sp_rank // layout.ulysses_size,
        )
        full[:, index] = gathered[:, sp_rank * local : (sp_rank + 1) * local]
    return segment_ids(full)


# Above this many mask elements, packed rows are attended document by document instead of through
# one (S x S) boolean mask, so memory stays linear in the sequence length.
MASK_ELEMENTS_LIMIT = 1 << 24


def _per_document_attention(q, k, v, seg: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention inside each contiguous document of each row."""
    out = torch.empty_like(q)
    for row in range(seg.shape[0]):
        starts = torch.nonzero(torch.diff(seg[row], prepend=seg[row, :1] - 1)).flatten().tolist()
        for start, stop in zip(starts, [*starts[1:], seg.shape[1]]):
            piece = slice(start, stop)
            out[row : row + 1, :, piece] = F.scaled_dot_product_attention(
                q[row : row + 1, :, piece],
                k[row : row + 1, :, piece],
                v[row : row + 1, :, piece],
                is_causal=True,
                scale=scale,
            )
    return out


def local_attention(q, k, v, index: torch.Tensor, segments: torch.Tensor, scale: float) -> torch.Tensor:
    """Exact attention over a complete sequence (in `index` order) with causal + document masking."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    ordered = bool((index[1:] > index[:-1]).all()) if index.numel() > 1 else True
    seg = segments[:, index]
    if ordered and bool((seg == seg[:, :1]).all()):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if ordered and seg.shape[0] * seg.shape[1] ** 2 > MASK_ELEMENTS_LIMIT:
        return _per_document_attention(q, k, v, seg, scale)
    allowed = allowed_mask(index, seg, index, seg)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def sequence_parallel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    position_ids: torch.Tensor,
    layout: SequenceParallelLayout,
    scale: float,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact attention for sequence-sharded q (b, H, s, d), k/v (b, KV, s, d); returns (b, H, s, d)."""
    if segments is None:
        segments = full_sequence_metadata(position_ids, layout)
    length = segments.shape[1]

    def ring_local_index(ring_rank: int) -> torch.Tensor:
        return shard_indices(length, 1, layout.ring_size, 0, ring_rank)

    def attend(q_heads, k_heads, v_heads):
        if layout.ring_size == 1:
            return local_attention(q_heads, k_heads, v_heads, ring_local_index(0), segments, scale)
        peers = RingPeers(
            size=layout.ring_size,
            rank=layout.ring_rank,
            send_to=layout.ring_global_rank(layout.ring_rank + 1),
            receive_from=layout.ring_global_rank(layout.ring_rank - 1),
            group=layout.ring_group,
        )
        return ring_attention(
            q_heads, k_heads, v_heads, scale=scale, peers=peers, index_of=ring_local_index, segments=segments
        )

    return ulysses_attention(q, k, v, layout.ulysses_group, layout.ulysses_size, attend)

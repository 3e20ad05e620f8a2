"""Head slices of the whole sequence, over the whole SP group, in global token order.

A recurrent mixer (a delta rule, a Mamba scan, a causal convolution) runs along the sequence one
head (or channel) at a time, so a slice of its heads over the *whole* sequence is computed exactly
(the all-to-all DeepSpeed-Ulysses uses for attention, Jacobs et al. 2023; Megatron-Core routes Gated
DeltaNet and Mamba the same way). Unlike attention, which only needs to know which tokens are
which, a recurrence needs the tokens in order: with a ring (zigzag) layout a rank's shard is two
runs from opposite ends of the sequence, so the gathered pieces are put back in global order here.
The exchange always spans the whole SP group (ulysses x ring), whatever mode attention uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .comm import heads_to_sequence, sequence_to_heads
from .mesh import SequenceParallelLayout
from .sharding import shard_runs


def gathered_global_indices(length: int, layout: SequenceParallelLayout) -> list[int]:
    """The global token index at each position of the SP group's shards laid end to end (sp-rank order)."""
    indices: list[int] = []
    for sp_rank in range(layout.sp_size):
        runs = shard_runs(
            length, layout.ulysses_size, layout.ring_size, sp_rank % layout.ulysses_size, sp_rank // layout.ulysses_size
        )
        for start, stop in runs:
            indices.extend(range(start, stop))
    return indices


@dataclass(frozen=True)
class SequenceOrder:
    """Index tensors between the gathered (sp-rank) order and the global token order; None when they
    agree (contiguous shards: no ring)."""

    to_global: torch.Tensor | None  # gathered[:, to_global] is the sequence in global order
    to_gathered: torch.Tensor | None  # its inverse

    @classmethod
    def build(cls, length: int, layout: SequenceParallelLayout | None, device: torch.device) -> SequenceOrder:
        if layout is None or layout.sp_size == 1 or layout.ring_size == 1:
            return cls(None, None)
        gathered = gathered_global_indices(length, layout)
        to_global = [0] * length
        for position, token in enumerate(gathered):
            to_global[token] = position
        return cls(
            torch.tensor(to_global, dtype=torch.long, device=device),
            torch.tensor(gathered, dtype=torch.long, device=device),
        )


def _group_size(layout: SequenceParallelLayout | None) -> int:
    return 1 if layout is None else layout.sp_size


def scatter_heads(
    tensors: list[torch.Tensor], layout: SequenceParallelLayout | None, order: SequenceOrder
) -> list[torch.Tensor]:
    """(b, s/P, H_i, d_i) sequence shards -> (b, S, H_i/P, d_i): this rank's head slice of every
    tensor over the whole sequence in global order, all in one all-to-all (differentiable)."""
    size = _group_size(layout)
    if size == 1:
        return tensors
    batch, local = tensors[0].shape[:2]
    widths, shapes = [], []
    parts = []
    for tensor in tensors:
        heads, dim = tensor.shape[2], tensor.shape[3]
        if heads % size:
            raise ValueError(f"{heads} heads cannot be split over the {size} ranks of the SP group")
        shapes.append((heads // size, dim))
        widths.append(heads // size * dim)
        parts.append(tensor.reshape(batch, local, size, heads // size * dim))
    packed = torch.cat(parts, dim=-1).transpose(1, 2)  # (b, P, s/P, C): "head" u is rank u's slice
    whole = heads_to_sequence(packed, layout.sp_group)[:, 0]  # (b, S, C) in sp-rank order
    if order.to_global is not None:
        whole = whole.index_select(1, order.to_global)
    pieces = torch.split(whole, widths, dim=-1)
    return [piece.reshape(batch, whole.shape[1], *shape) for piece, shape in zip(pieces, shapes)]


def gather_heads(x: torch.Tensor, layout: SequenceParallelLayout | None, order: SequenceOrder) -> torch.Tensor:
    """The inverse of `scatter_heads` for one tensor: (b, S, H/P, d) -> (b, s/P, H, d) (differentiable)."""
    size = _group_size(layout)
    if size == 1:
        return x
    batch, length, heads, dim = x.shape
    if order.to_gathered is not None:
        x = x.index_select(1, order.to_gathered)
    shards = sequence_to_heads(x.reshape(batch, 1, length, heads * dim), layout.sp_group)  # (b, P, s/P, C)
    local = length // size
    return shards.transpose(1, 2).reshape(batch, local, size * heads, dim)

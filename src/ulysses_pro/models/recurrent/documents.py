"""What every recurrent mixer of one forward needs to know about the sequence, computed once.

Documents are read off the global position ids exactly as attention reads them (a document starts
where positions do not step by one, `parallel.plan.document_starts`): packed rows, padding (which
continues the last document) and SP shards all follow from them. A mixer gets the whole sequence
of its heads in global order (`parallel.whole_sequence`), so it needs, per token of that sequence,
how far it is from its document's first token (a convolution must not reach past it), and the
document bounds on the host (the recurrence restarts at each). The context travels to the mixers
as a keyword argument of the model call, so gradient checkpointing replays a layer with the
context of its own forward, never a later one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...parallel.mesh import SequenceParallelLayout
from ...parallel.plan import document_starts
from ...parallel.sharding import gather_full_sequence
from ...parallel.whole_sequence import SequenceOrder

CONTEXT_KEY = "ulysses_mixer_context"


@dataclass(frozen=True)
class MixerContext:
    """The document layout of one forward's whole sequence, for recurrent mixers."""

    layout: SequenceParallelLayout | None
    length: int  # tokens of the whole (gathered) sequence
    offsets: torch.Tensor = field(repr=False)  # (b, length): tokens since the document's first token
    starts: list[list[int]] = field(repr=False)  # per row, the token index of every document start
    order: SequenceOrder = field(repr=False)

    @property
    def sharded(self) -> bool:
        return self.layout is not None and self.layout.sp_size > 1

    @property
    def one_document_per_row(self) -> bool:
        return all(len(row) == 1 for row in self.starts)

    def documents(self, row: int) -> list[tuple[int, int]]:
        """[start, stop) of every document of a row (padding belongs to the last one)."""
        bounds = [*self.starts[row], self.length]
        return list(zip(bounds[:-1], bounds[1:]))


def offsets_in_document(positions: torch.Tensor) -> torch.Tensor:
    """(b, S) distance of each token from its document's first token (device ops, no host read)."""
    length = positions.shape[1]
    index = torch.arange(length, device=positions.device).expand_as(positions)
    begins = torch.ones_like(positions, dtype=torch.bool)
    begins[:, 1:] = positions[:, 1:] - positions[:, :-1] != 1
    first = torch.where(begins, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def build_context(
    position_ids: torch.Tensor, layout: SequenceParallelLayout | None, batch: int
) -> MixerContext:
    """Gather the SP group's positions (collective) and describe the documents of the whole sequence."""
    positions = gather_full_sequence(position_ids, layout) if layout is not None else position_ids
    if positions.shape[0] != batch:
        positions = positions.expand(batch, -1)
    return MixerContext(
        layout=layout,
        length=positions.shape[1],
        offsets=offsets_in_document(positions),
        starts=document_starts(positions),
        order=SequenceOrder.build(positions.shape[1], layout, positions.device),
    )

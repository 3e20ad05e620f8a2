"""What every recurrent mixer of one forward needs to know about the sequence, computed once.

Documents are read off the global position ids exactly as attention reads them (a document starts
where positions do not step by one, `parallel.plan.document_starts`): packed rows, padding (which
continues the last document) and SP shards all follow from them. A mixer gets the whole sequence
of its heads in global order (`parallel.whole_sequence`), so it needs, per token of that sequence,
how far it is from its document's first token (a convolution must not reach past it), and the
document bounds on the host (the recurrence restarts at each). The context travels to the mixers
as a keyword argument of the model call, so gradient checkpointing replays a layer with the
context of its own forward, never a later one; it also carries the position ids to attention
layers of families that do not pass them down (Granite-MoE-hybrid, Llama 4).
"""

from __future__ import annotations

from functools import cached_property

import torch

from ...parallel.mesh import SequenceParallelLayout
from ...parallel.plan import DocumentLayout, document_starts
from ...parallel.sharding import gather_full_sequence
from ...parallel.whole_sequence import SequenceOrder

CONTEXT_KEY = "ulysses_mixer_context"


class MixerContext:
    """The document layout of one forward's whole sequence, for recurrent mixers.

    Built lazily: a forward whose mixers never run (an attention-only family that gets the context
    only for its position ids) gathers nothing and reads nothing back; the first mixer of a forward
    does it for all (every rank runs the same layers, so all take part in the gather together)."""

    def __init__(self, position_ids: torch.Tensor, layout: SequenceParallelLayout | None, batch: int):
        self.position_ids = position_ids  # this rank's, as the model call got them
        self.layout = layout
        self._batch = batch

    def __deepcopy__(self, memo) -> None:
        # A copy of a model (DPO's frozen reference) gets no forward's context: it builds its own.
        return None

    @property
    def sharded(self) -> bool:
        return self.layout is not None and self.layout.sp_size > 1

    @cached_property
    def positions(self) -> torch.Tensor:
        """(b, S) positions of the whole sequence in global order (collective over the SP group)."""
        positions = gather_full_sequence(self.position_ids, self.layout) if self.layout else self.position_ids
        return positions.expand(self._batch, -1) if positions.shape[0] != self._batch else positions

    @property
    def length(self) -> int:
        return self.positions.shape[1]

    @cached_property
    def offsets(self) -> torch.Tensor:
        """(b, S) tokens since each token's document start."""
        return offsets_in_document(self.positions)

    @cached_property
    def starts(self) -> list[list[int]]:
        """Per row, the token index of every document start (the context's one host read)."""
        return document_starts(self.positions)

    @cached_property
    def document_layout(self) -> DocumentLayout:
        """The same documents as attention plans read them (so a hybrid gathers and reads once)."""
        return DocumentLayout(self.starts, self.length, self.position_ids.device)

    @cached_property
    def order(self) -> SequenceOrder:
        return SequenceOrder.build(self.length, self.layout, self.positions.device)

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
    """The context of one forward (nothing is gathered or read until a mixer asks)."""
    return MixerContext(position_ids, layout, batch)

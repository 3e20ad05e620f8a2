"""The attention plan of one forward: which (query, key) pieces each ring step computes.

Documents, padding and the zigzag layout are the same in every layer, so the plan is built once
per forward (DESIGN contract 9) from the document starts of the full sequence: one host read of
those starts, then pure Python. Every piece is a kernel call with no mask at all:
- a run against itself (the diagonal): causal, one varlen problem per document in the run;
- keys wholly before the queries: only the document that spans the gap can be seen (documents are
  contiguous), so the piece is one dense rectangle per row (its first queries x its last keys);
- keys after the queries: nothing.
So causal, packed and zigzag layouts are exact without masks, and padding (which continues the
row's last document, see `sharding.pad_for_sequence_parallel`) costs nothing extra.

A sliding window (transformers' `sliding_window` W: a query sees the W - 1 tokens before it and
itself) is planned per window size: the diagonal gets the kernel's window, and a rectangle is cut
to the queries that see any of its keys and the keys that any of them sees, with the window left
over expressed in the kernel's bottom-right convention; a rectangle wholly outside the window is
no piece at all, so a ring step whose blocks no query can see computes nothing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from .kernels import Sequences
from .mesh import SequenceParallelLayout
from .sharding import gather_full_sequence, ring_runs


@dataclass(frozen=True)
class Piece:
    """One kernel call: queries q (and keys k) of batch rows `rows`, with their varlen problems."""

    rows: slice
    q: slice
    k: slice
    causal: bool
    sequences: Sequences
    window: int = -1  # keys more than this before a query's diagonal are hidden (-1: none)


@dataclass(frozen=True)
class AttentionPlan:
    """Pieces per ring step; the step at `offsets[i]` computes against the key block of ring rank
    (rank - offsets[i]) mod R. Offsets no rank has work at are left out (sliding windows)."""

    steps: tuple[tuple[Piece, ...], ...]
    batch: int
    length: int  # queries on this rank after the ulysses gather (its ring-local sequence)
    offsets: tuple[int, ...] = (0,)

    @property
    def whole(self) -> Piece | None:
        """The single piece covering every query, when there is one (no merge needed)."""
        if len(self.steps) == 1 and len(self.steps[0]) == 1:
            piece = self.steps[0][0]
            covers_rows = (piece.rows.start, piece.rows.stop) == (0, self.batch)
            if covers_rows and (piece.q.start, piece.q.stop) == (0, self.length):
                return piece
        return None


def full_positions(position_ids: torch.Tensor, layout: SequenceParallelLayout) -> torch.Tensor:
    """Position ids (b, S) of the whole sequence in global token order, from every SP rank's shard."""
    return gather_full_sequence(position_ids, layout)


def document_starts(positions: torch.Tensor) -> list[list[int]]:
    """Per row, the sorted token indices where a document starts (positions do not step by 1).

    This is the plan's one read of device data: a nonzero and a copy of the (few) starts.
    """
    breaks = torch.nonzero(positions[:, 1:] - positions[:, :-1] != 1).tolist()
    starts: list[list[int]] = [[0] for _ in range(positions.shape[0])]
    for row, index in breaks:
        starts[row].append(index + 1)
    return starts


def _diagonal(starts, run, local, batch, device, window: int | None = None) -> Piece:
    """A run against itself: causal, split at every document start inside the run."""
    first, stop = run
    size = stop - first
    left = window - 1 if window is not None and window < size else -1
    bounds, uniform = [], True
    for row, row_starts in enumerate(starts):
        inside = row_starts[bisect.bisect_right(row_starts, first) : bisect.bisect_left(row_starts, stop)]
        uniform = uniform and not inside
        bounds.extend(row * size + offset for offset in [0, *(s - first for s in inside)])
    bounds.append(batch * size)
    span = slice(local, local + size)
    sequences = Sequences.build(bounds, bounds, uniform=uniform, device=device)
    return Piece(slice(0, batch), span, span, True, sequences, left)


def _in_window(extent, gap: int, span: int, window: int | None):
    """(queries, key offset, kernel window) of a rectangle cut to what a window of `window` sees.

    Query i (from the rectangle's first query) is gap + 1 + i tokens after the last key, so only
    queries i <= window - 2 - gap see a key; the first query sees keys from span + gap + 1 - window."""
    if extent is None:
        return None
    queries, key_offset = extent
    if window is None:
        return queries, key_offset, -1
    queries = min(queries, window - 1 - gap)
    key_offset = max(key_offset, span + gap + 1 - window)
    if queries <= 0 or key_offset >= span:
        return None
    # The last query's distance to the first key kept: within the window, every key is seen.
    reaches_all = (span - key_offset) + gap + queries - 1 <= window - 1
    return queries, key_offset, -1 if reaches_all else window - 1 - gap - queries


def _rectangles(starts, q_run, q_local, k_run, k_local, batch, device, window=None) -> list[Piece]:
    """Keys wholly before the queries: per row, the one document spanning the gap, if any."""
    (q_first, q_stop), (k_first, k_stop) = q_run, k_run
    extents = []
    for row_starts in starts:
        document = bisect.bisect_right(row_starts, q_first) - 1  # the document of the first query
        begins = row_starts[document]
        if begins >= k_stop:
            extents.append(None)  # that document starts after the last key: nothing shared
            continue
        ends = row_starts[document + 1] if document + 1 < len(row_starts) else q_stop
        extents.append((min(ends, q_stop) - q_first, max(begins, k_first) - k_first))
    extents = [_in_window(extent, q_first - k_stop, k_stop - k_first, window) for extent in extents]
    groups = []
    if len(set(extents)) == 1:
        groups = [(slice(0, batch), extents[0])]
    else:
        groups = [(slice(row, row + 1), extent) for row, extent in enumerate(extents)]
    pieces = []
    for rows, extent in groups:
        if extent is None:
            continue
        queries, key_offset, left = extent
        keys = (k_stop - k_first) - key_offset
        count = rows.stop - rows.start
        key_span = slice(k_local + key_offset, k_local + key_offset + keys)
        for first, stop, window_left in _window_split(queries, keys, left):
            sequences = Sequences.rows(count, stop - first, keys, device)
            pieces.append(
                Piece(rows, slice(q_local + first, q_local + stop), key_span, False, sequences, window_left)
            )
    return pieces


def _window_split(queries: int, keys: int, left: int) -> list[tuple[int, int, int]]:
    """(first query, stop, kernel window) parts of a non-causal rectangle.

    Flash kernels bound a windowed call's right side by the key count (window_size_right
    unlimited becomes seqlen_k), so a windowed call must not have more than keys + 1 queries. The
    leading queries that see every key (i <= queries - keys + left) run unwindowed; the rest,
    fewer than `keys`, keep the same left window in the bottom-right convention.
    """
    if left < 0:
        return [(0, queries, -1)]
    sees_all = max(0, min(queries, queries - keys + left + 1))
    parts = [(0, sees_all, -1)] if sees_all else []
    if sees_all < queries:
        parts.append((sees_all, queries, left))
    return parts


def _with_local_offsets(runs: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    out, offset = [], 0
    for start, stop in runs:
        out.append(((start, stop), offset))
        offset += stop - start
    return out


def needed_offsets(length: int, ring_size: int, window: int | None) -> tuple[int, ...]:
    """Ring offsets at which some ring rank has keys within some query's window (all of them
    without a window). Documents are ignored: they can only remove work, and every rank must
    agree on the offsets, which the zigzag runs alone decide."""
    if window is None:
        return tuple(range(ring_size))
    needed = [0]
    for offset in range(1, ring_size):
        for rank in range(ring_size):
            q_runs = ring_runs(length, ring_size, rank)
            k_runs = ring_runs(length, ring_size, (rank - offset) % ring_size)
            # The nearest query-key pair of a rectangle is (gap + 1) apart; visible if <= window - 1.
            if any(
                k_stop <= q_first and q_first - k_stop + 1 <= window - 1
                for q_first, _ in q_runs
                for _, k_stop in k_runs
            ):
                needed.append(offset)
                break
    return tuple(needed)


def build_plan(
    starts: list[list[int]],
    length: int,
    ring_size: int,
    ring_rank: int,
    device: torch.device,
    window: int | None = None,
) -> AttentionPlan:
    """The pieces of every ring step for this ring rank (ring_size 1: local attention); `window` is
    transformers' `sliding_window` (None: full causal attention)."""
    batch = len(starts)
    q_runs = _with_local_offsets(ring_runs(length, ring_size, ring_rank))
    steps = []
    offsets = needed_offsets(length, ring_size, window)
    for step in offsets:
        k_runs = _with_local_offsets(ring_runs(length, ring_size, (ring_rank - step) % ring_size))
        pieces: list[Piece] = []
        for q_run, q_local in q_runs:
            for k_run, k_local in k_runs:
                if k_run == q_run:
                    pieces.append(_diagonal(starts, q_run, q_local, batch, device, window))
                elif k_run[1] <= q_run[0]:
                    pieces.extend(_rectangles(starts, q_run, q_local, k_run, k_local, batch, device, window))
        steps.append(tuple(pieces))
    local = sum(stop - start for (start, stop), _ in q_runs)
    return AttentionPlan(tuple(steps), batch, local, offsets)


@dataclass(frozen=True)
class DocumentLayout:
    """Where the documents of the whole (gathered) sequence start: what every plan of a forward needs."""

    starts: list[list[int]]
    length: int
    device: torch.device

    def in_chunks(self, size: int) -> DocumentLayout:
        """Chunked attention (Llama 4: a token sees only its own `size`-token chunk of its document)
        as documents: each document also restarts every `size` tokens. Positions restart at 0 per
        document, so the chunk grid starts at each document start, as it would for the document alone."""
        rows = []
        for row in self.starts:
            ends = [*row[1:], self.length]
            rows.append([chunk for start, end in zip(row, ends) for chunk in range(start, end, size)])
        return DocumentLayout(rows, self.length, self.device)


def gather_documents(
    position_ids: torch.Tensor, layout: SequenceParallelLayout, batch: int | None = None
) -> DocumentLayout:
    """Gather the SP group's position ids and find the document starts (collective: every SP rank)."""
    positions = full_positions(position_ids, layout)
    if batch is not None and positions.shape[0] != batch:
        positions = positions.expand(batch, -1)
    return DocumentLayout(document_starts(positions), positions.shape[1], position_ids.device)


def plan_for(
    documents: DocumentLayout, layout: SequenceParallelLayout, window: int | None = None
) -> AttentionPlan:
    """This rank's plan over `documents`, for one window size (no communication)."""
    return build_plan(
        documents.starts, documents.length, layout.ring_size, layout.ring_rank, documents.device, window
    )


def build_attention_plan(
    position_ids: torch.Tensor,
    layout: SequenceParallelLayout,
    batch: int | None = None,
    window: int | None = None,
) -> AttentionPlan:
    """Gather the SP group's position ids and plan this rank's attention (collective: call on every SP rank)."""
    return plan_for(gather_documents(position_ids, layout, batch), layout, window)

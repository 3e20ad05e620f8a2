"""Packing documents into rows of at most `capacity` tokens.

Each document arrives with its labels already shifted (`shift_labels[t]` is the target of token t,
and the last token of a document has none), so concatenating documents never trains one document
to predict the next.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .templates import IGNORE_INDEX

Document = dict[str, list[int]]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group document indices into bins of total length <= capacity (best-fit decreasing).

    Longest documents are placed first, each into the open bin it fills most tightly; this packs
    close to optimally on skewed length distributions. Output order is deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # Sorted list of (free space, bin id): the tightest fit is the first entry with enough space.
    free: list[tuple[int, int]] = []
    for index in order:
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"document {index} has {size} tokens, more than the row capacity {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, bin_id = free.pop(slot)
        else:
            space, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(index)
        bisect.insort(free, (space - size, bin_id))
    return bins


def shifted(input_ids: list[int], labels: list[int]) -> Document:
    """One document with labels shifted left by one (the model then needs no shift)."""
    return {"input_ids": list(input_ids), "shift_labels": list(labels[1:]) + [IGNORE_INDEX]}


def pack_documents(documents: list[Document], capacity: int, *, isolate: bool) -> list[Document]:
    """Bin-pack documents into rows with position ids.

    `isolate=True` (neat packing) restarts position ids per document, which transformers reads as
    separate sequences: no document attends to another. `isolate=False` keeps one running position
    range, the LLaMA-Factory `packing` behaviour (documents see their predecessors).
    """
    rows = []
    for members in best_fit_decreasing([len(d["input_ids"]) for d in documents], capacity):
        row: Document = {"input_ids": [], "shift_labels": [], "position_ids": []}
        for index in members:
            doc = documents[index]
            start = 0 if isolate else len(row["input_ids"])
            row["input_ids"] += doc["input_ids"]
            row["shift_labels"] += doc["shift_labels"]
            row["position_ids"] += list(range(start, start + len(doc["input_ids"])))
        rows.append(row)
    return rows


def chunk_stream(token_stream: list[int], block: int) -> list[Document]:
    """Pretraining packing: cut one long token stream into blocks of exactly `block` tokens."""
    rows = []
    for start in range(0, len(token_stream) - block + 1, block):
        ids = token_stream[start : start + block]
        rows.append({**shifted(ids, ids), "position_ids": list(range(block))})
    return rows

"""Packing documents into rows of at most `capacity` tokens, and what packing cost.

Each document arrives with its labels already shifted (`shift_labels[t]` is the target of token t,
and the last token of a document has none), so concatenating documents never trains one document
to predict the next.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from .templates import IGNORE_INDEX

Document = dict[str, list[int]]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group document indices into bins of total length <= capacity (best-fit decreasing).

    Longest documents are placed first, each into the open bin it fills most tightly; this packs
    close to optimally on skewed length distributions (BFD uses at most 11/9 OPT + 6/9 bins,
    Dósa 2007). Output order is deterministic.
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


def next_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy concatenation in arrival order: a document that does not fit closes the row.

    The baseline best-fit decreasing is measured against (tests, bench/data_pipeline.py).
    """
    bins: list[list[int]] = []
    used = capacity
    for index, size in enumerate(lengths):
        if size > capacity:
            raise ValueError(f"document {index} has {size} tokens, more than the row capacity {capacity}")
        if used + size > capacity:
            bins.append([])
            used = 0
        bins[-1].append(index)
        used += size
    return bins


def shifted(input_ids: list[int], labels: list[int]) -> Document:
    """One document with labels shifted left by one (the model then needs no shift)."""
    return {"input_ids": list(input_ids), "shift_labels": list(labels[1:]) + [IGNORE_INDEX]}


def windows(ids: list[int], capacity: int) -> list[list[int]]:
    """A document cut into windows of at most `capacity` tokens that overlap by one token.

    Window k+1 starts with the last token of window k, which has no target inside window k, so
    every next-token target of the document is trained exactly once, as if it had not been cut.
    """
    if len(ids) <= capacity:
        return [list(ids)]
    stride = capacity - 1
    return [ids[start : start + capacity] for start in range(0, len(ids) - 1, stride)]


def pack_documents(documents: list[Document], capacity: int, *, isolate: bool) -> list[Document]:
    """Bin-pack documents into rows with position ids and the length of each document.

    `isolate=True` (neat packing) restarts position ids per document, which transformers reads as
    separate sequences: no document attends to another. `isolate=False` keeps one running position
    range, the LLaMA-Factory `packing` behaviour (documents see their predecessors but, labels being
    shifted per document, never learn to predict them). `document_lengths` lists the documents of
    the row in order (NEFTune scales its noise by them).
    """
    rows = []
    for members in best_fit_decreasing([len(d["input_ids"]) for d in documents], capacity):
        row: Document = {"input_ids": [], "shift_labels": [], "position_ids": [], "document_lengths": []}
        for index in members:
            doc = documents[index]
            start = 0 if isolate else len(row["input_ids"])
            row["input_ids"] += doc["input_ids"]
            row["shift_labels"] += doc["shift_labels"]
            row["position_ids"] += list(range(start, start + len(doc["input_ids"])))
            row["document_lengths"].append(len(doc["input_ids"]))
            for kind in ("images", "videos"):  # a row's media, in the order of its visual tokens
                if kind in doc:
                    row.setdefault(kind, []).extend(doc[kind])
        rows.append(row)
    return rows


@dataclass
class PackingReport:
    """What turning documents into rows cost: padding up to `capacity`, and documents that were cut."""

    documents: int
    cut_documents: int
    rows: int
    tokens: int
    capacity: int
    trained_tokens: int

    @property
    def padding_rate(self) -> float:
        """Share of the rows' `capacity` slots that hold no token."""
        return 1.0 - self.tokens / max(1, self.rows * self.capacity)

    @property
    def truncation_rate(self) -> float:
        """Share of documents cut by cutoff_len (split into windows, or truncated)."""
        return self.cut_documents / max(1, self.documents)

    def describe(self) -> str:
        return (
            f"{self.documents} documents -> {self.rows} rows of <= {self.capacity} tokens, "
            f"{self.tokens} tokens ({self.trained_tokens} trained); padding to cutoff_len "
            f"{100 * self.padding_rate:.1f}%, documents cut {self.cut_documents} "
            f"({100 * self.truncation_rate:.1f}%)"
        )


def batch_padding_fraction(lengths: Sequence[int], order: Sequence[int], batch: int) -> float:
    """Padded share of the token slots of batches taken in `order`, each padded to its longest row."""
    slots = real = 0
    for start in range(0, len(order), batch):
        members = [lengths[i] for i in order[start : start + batch]]
        slots += max(members) * len(members)
        real += sum(members)
    return 1 - real / slots


def report(rows: list[Document], capacity: int, documents: int, cut_documents: int) -> PackingReport:
    return PackingReport(
        documents=documents,
        cut_documents=cut_documents,
        rows=len(rows),
        tokens=sum(len(row["input_ids"]) for row in rows),
        capacity=capacity,
        trained_tokens=sum(sum(1 for x in row["shift_labels"] if x != IGNORE_INDEX) for row in rows),
    )

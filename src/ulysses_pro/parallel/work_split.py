"""Whole items (images, videos) shared out over the ranks of an SP group, which hold the same samples.

Each item goes to one rank, so an encoder that attends within an item (a vision tower) runs on that
rank alone and exactly; the split is balanced by item size (largest first, each to the least loaded
rank, ties to the lowest rank: deterministic, so every rank computes the same owners without talking).
"""

from __future__ import annotations

from collections.abc import Sequence


def owners(sizes: Sequence[int], ranks: int) -> list[int]:
    """The rank that processes each item."""
    load = [0] * ranks
    owner = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owner[index] = rank
        load[rank] += sizes[index]
    return owner

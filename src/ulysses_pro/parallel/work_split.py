"""Whole items (images, video frame groups) shared out over the ranks of an SP group, which hold
the same samples.

Each item goes to one rank, so an encoder that attends within an item runs on that rank alone and
exactly; the split is balanced by item size (largest first, each to the least loaded rank, ties to
the lowest rank: deterministic, so every rank computes the same owners without talking). Qwen2-VL-
style vision towers attend within one temporal patch (a pair of frames) and place patches by height
and width only, so a video's temporal groups are items of their own (`time_pieces`): one long video
is split over the group too (tests/models/multimodal pins that encoding the groups apart equals
encoding the video whole, for every wired family).
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


def time_pieces(grids) -> list[tuple[int, int, int, int]]:
    """Every item's temporal groups, in order: (item, group, height, width) (an image is one)."""
    return [(item, group, int(h), int(w)) for item, (t, h, w) in enumerate(grids) for group in range(int(t))]

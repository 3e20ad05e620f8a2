"""Which samples each rank trains on (DESIGN contract 1)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class SequenceParallelSampler(Sampler[int]):
    """Seeded shuffle shared by all ranks; DP rank d takes every dp-th index starting at d.

    Every rank of one SP group has the same DP rank, so it sees the same samples in the same order;
    DP groups see disjoint samples. The union of one optimizer step's micro-batches over the DP
    ranks is a contiguous slice of the shared permutation, so global batches do not depend on how
    the world is split into DP x SP (nor on gradient accumulation). The tail is padded by wrapping
    around so every DP rank has the same number of samples.
    """

    def __init__(
        self,
        length: int,
        dp_size: int = 1,
        dp_rank: int = 0,
        *,
        seed: int = 0,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        group_size: int = 1,
    ):
        """`lengths` (one per sample) turns on length grouping: the shuffled order is cut into groups
        of `group_size` samples, each sorted longest first, so a batch holds samples of similar length
        and pads little, while the order of groups stays random."""
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside 0..{dp_size - 1}")
        if lengths is not None and len(lengths) != length:
            raise ValueError(f"{len(lengths)} lengths for {length} samples")
        self.length, self.dp_size, self.dp_rank = length, dp_size, dp_rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.lengths, self.group_size = lengths, max(1, group_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.length // self.dp_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.lengths is not None:
            order = group_by_length(order, self.lengths, self.group_size)
        total = len(self) * self.dp_size
        order += order[: total - len(order)]
        return iter(order[self.dp_rank :: self.dp_size])


def group_by_length(order: list[int], lengths: Sequence[int], group_size: int) -> list[int]:
    """Sort each run of `group_size` indices longest first; the group holding the longest sample goes
    first, so a sequence too long for memory fails at step 1, not hours in (as transformers'
    LengthGroupedSampler does)."""
    groups = [
        sorted(order[start : start + group_size], key=lambda i: -lengths[i])
        for start in range(0, len(order), group_size)
    ]
    if not groups:
        return []
    longest = max(range(len(groups)), key=lambda g: lengths[groups[g][0]])
    groups[0], groups[longest] = groups[longest], groups[0]
    return [index for group in groups for index in group]


class EvaluationBatches(Sampler[list[int]]):
    """Evaluation batches of one DP rank: over all DP ranks, every sample exactly once.

    DP rank d takes samples d, d + dp, ... in order, cut into batches. No sample is repeated to even
    out the ranks (a wrapped-around copy would be counted twice in the evaluation loss); instead a
    rank whose share ends a batch early gets padding batches, `[length]` (an index one past the
    end), which `EvaluationRows` serves as a marked copy that must count zero. Every rank runs the
    same number of forwards because each forward holds collectives: SP groups exchange activations,
    FSDP and ZeRO-3 gather weights over the whole world.
    """

    def __init__(self, length: int, batch_size: int, dp_size: int = 1, dp_rank: int = 0):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside 0..{dp_size - 1}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.length, self.batch_size, self.dp_size, self.dp_rank = length, batch_size, dp_size, dp_rank

    def __len__(self) -> int:
        largest_share = -(-self.length // self.dp_size)
        return -(-largest_share // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        share = list(range(self.dp_rank, self.length, self.dp_size))
        batches = [share[start : start + self.batch_size] for start in range(0, len(share), self.batch_size)]
        batches += [[self.length]] * (len(self) - len(batches))
        return iter(batches)

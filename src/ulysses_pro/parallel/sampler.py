"""Which samples each rank trains on (DESIGN contract 1)."""

from __future__ import annotations

from collections.abc import Iterator

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
        self, length: int, dp_size: int = 1, dp_rank: int = 0, *, seed: int = 0, shuffle: bool = True
    ):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside 0..{dp_size - 1}")
        self.length, self.dp_size, self.dp_rank = length, dp_size, dp_rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

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
        total = len(self) * self.dp_size
        order += order[: total - len(order)]
        return iter(order[self.dp_rank :: self.dp_size])

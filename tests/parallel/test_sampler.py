"""The shared-order sampler: DP ranks disjoint, whole coverage, and length grouping."""

from __future__ import annotations

import random

from ulysses_pro.data.packing import batch_padding_fraction
from ulysses_pro.parallel.sampler import SequenceParallelSampler, group_by_length


def test_dp_ranks_split_one_shared_order():
    ranks = [list(SequenceParallelSampler(10, 2, rank, seed=3)) for rank in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
    assert ranks == [list(SequenceParallelSampler(10, 2, rank, seed=3)) for rank in range(2)]  # reproducible


def test_length_grouping_cuts_padding_and_keeps_every_sample():
    rng = random.Random(0)
    lengths = [max(8, int(rng.lognormvariate(5, 1))) for _ in range(2000)]
    batch, dp = 4, 2
    plain = [list(SequenceParallelSampler(2000, dp, r, seed=1)) for r in range(dp)]
    grouped = [
        list(SequenceParallelSampler(2000, dp, r, seed=1, lengths=lengths, group_size=50 * batch * dp))
        for r in range(dp)
    ]
    assert sorted(grouped[0] + grouped[1]) == list(range(2000))
    assert not set(grouped[0]) & set(grouped[1])
    before = batch_padding_fraction(lengths, plain[0], batch)
    after = batch_padding_fraction(lengths, grouped[0], batch)
    assert after < 0.25 * before, (before, after)
    # The longest sample comes first, so memory trouble shows at the first step.
    assert lengths[grouped[0][0]] == max(lengths) or lengths[grouped[1][0]] == max(lengths)
    # Grouping keeps randomness across epochs and seeds.
    other = SequenceParallelSampler(2000, dp, 0, seed=2, lengths=lengths, group_size=400)
    assert list(other) != grouped[0]


def test_group_by_length_sorts_within_groups_only():
    lengths = [1, 9, 5, 7, 3, 8]
    assert group_by_length([0, 1, 2, 3, 4, 5], lengths, 3) == [1, 2, 0, 5, 3, 4]

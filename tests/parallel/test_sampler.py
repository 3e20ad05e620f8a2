"""The shared-order sampler: DP ranks disjoint, whole coverage, and length grouping; evaluation batches."""

from __future__ import annotations

import random

import pytest

from ulysses_pro.data.packing import batch_padding_fraction
from ulysses_pro.parallel.sampler import EvaluationBatches, SequenceParallelSampler, group_by_length


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


@pytest.mark.parametrize(("length", "batch", "dp"), [(5, 2, 2), (9, 2, 4), (1, 3, 2), (8, 2, 2), (0, 2, 2)])
def test_evaluation_batches_hold_every_sample_once_and_pad_short_ranks(length, batch, dp):
    ranks = [list(EvaluationBatches(length, batch, dp, rank)) for rank in range(dp)]
    steps = len(EvaluationBatches(length, batch, dp, 0))
    assert all(len(batches) == steps for batches in ranks)  # every rank runs the same forwards
    real = [i for batches in ranks for b in batches for i in b if i != length]
    assert sorted(real) == list(range(length))  # no wrapped-around duplicate
    padding = [b for batches in ranks for b in batches if length in b]
    assert all(b == [length] for b in padding)  # a padding batch never mixes with real rows
    # Step k of all ranks together is one contiguous slice, as one process with batch * dp would see.
    for step in range(steps):
        together = sorted(i for batches in ranks for i in batches[step] if i != length)
        assert together == list(range(step * batch * dp, min(length, (step + 1) * batch * dp)))


def test_evaluation_batches_pad_the_short_rank_of_five_rows():
    assert list(EvaluationBatches(5, 2, 2, 0)) == [[0, 2], [4]]
    assert list(EvaluationBatches(5, 2, 2, 1)) == [[1, 3], [5]]

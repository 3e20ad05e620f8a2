"""Contract 7: per-sequence sums over the SP group, then a nonlinearity, give exact gradients."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.parallel.reduce import RunningMean, sum_over_sequence_parallel

from ..launcher import run_ranks


def _pieces():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)  # (ranks, sequences, tokens)


def _loss(sequence_sums):
    # A DPO-like nonlinearity of whole-sequence sums.
    return -torch.nn.functional.logsigmoid(0.3 * (sequence_sums[0] - sequence_sums[1:]).sum())


def _on_ranks(rank, world):
    local = _pieces()[rank].clone().requires_grad_(True)
    sums = sum_over_sequence_parallel(local.sum(dim=-1))
    loss = _loss(sums)
    loss.backward()
    return loss.item(), local.grad


def test_sequence_sums_over_two_ranks_match_one_process():
    full = _pieces().clone().requires_grad_(True)
    reference = _loss(full.sum(dim=(0, 2)))
    reference.backward()
    results = run_ranks(_on_ranks, 2)
    for rank, (loss, grad) in enumerate(results):
        assert abs(loss - reference.item()) < 1e-12  # every rank holds the same loss
        torch.testing.assert_close(grad, full.grad[rank], rtol=1e-12, atol=1e-12)  # its own share, once


def test_single_process_is_a_no_op():
    value = torch.ones(3, requires_grad=True)
    assert sum_over_sequence_parallel(value) is value


def _running_means(rank, world_size, values):
    running = RunningMean()
    return [float(running.update(torch.tensor(step[rank]))) for step in values]


def test_running_mean_counts_one_value_per_rank_and_step():
    """TRL's RunningMoments mean: every value seen so far weighs the same, on every rank alike."""
    values = [(1.0, 3.0), (-2.0, 10.0), (0.5, 0.5)]
    expected = [2.0, 3.0, 13.0 / 6.0]
    for means in run_ranks(_running_means, 2, values):
        assert means == [pytest.approx(m, rel=1e-6) for m in expected]  # returned in the value's float32
    single = RunningMean()
    assert [float(single.update(torch.tensor(v))) for v in (1.0, 3.0, 8.0)] == [1.0, 2.0, 4.0]
    assert float(single.current(torch.tensor(0.0))) == 4.0  # evaluation reads it without adding
    restored = RunningMean()
    restored.load_state_dict(single.state_dict())
    assert float(restored.update(torch.tensor(0.0))) == 3.0

"""Contract 7: per-sequence sums over the SP group, then a nonlinearity, give exact gradients."""

from __future__ import annotations

import torch

from ulysses_pro.parallel.reduce import sum_over_sequence_parallel

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

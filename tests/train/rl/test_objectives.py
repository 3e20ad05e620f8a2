"""GRPO and PPO objectives against their textbook definitions, written out here loop by loop."""

from __future__ import annotations

import math

import pytest
import torch

from ulysses_pro.train.rl.objectives import (
    clipped_surrogate,
    clipped_value_loss,
    gae,
    group_advantages,
    grpo_token_losses,
    k3_kl,
    masked_whiten,
    normalised_loss,
)


def test_group_advantages_centre_and_scale_each_prompt_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    advantages = group_advantages(rewards, num_generations=4)
    first = rewards[:4]
    expected = (first - first.mean()) / (first.std() + 1e-4)  # unbiased std, as TRL
    assert torch.allclose(advantages[:4], expected)
    assert torch.equal(advantages[4:], torch.zeros(4, dtype=torch.float64))  # equal rewards: no signal
    assert torch.allclose(group_advantages(rewards, 4, scale=False)[:4], first - 0.5)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(rewards, 3)


def test_clipped_surrogate_stops_the_gradient_outside_the_trust_region():
    old = torch.zeros(1, 4, dtype=torch.float64)
    logps = torch.log(torch.tensor([[0.5, 1.0, 1.25, 1.5]], dtype=torch.float64)).requires_grad_()
    for advantage, clipped_at in ((1.0, [False, False, True, True]), (-1.0, [True, False, False, False])):
        objective = clipped_surrogate(logps, old, torch.tensor([advantage], dtype=torch.float64), 0.2, 0.2)
        (grad,) = torch.autograd.grad(objective.losses.sum(), logps)
        assert objective.clipped.tolist() == [clipped_at]
        ratio = logps.detach().exp()
        expected = torch.where(
            torch.tensor(clipped_at), torch.zeros(4, dtype=torch.float64), -advantage * ratio
        )
        assert torch.allclose(grad, expected)
    # clip-higher: a larger upper bound lets the 1.25 ratio through
    high = clipped_surrogate(logps, old, torch.tensor([1.0], dtype=torch.float64), 0.2, 0.28)
    assert high.clipped.tolist() == [[False, False, False, True]]


def test_k3_is_non_negative_and_exact_in_expectation():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.4, 0.1], dtype=torch.float64)
    per_token = k3_kl(p.log(), q.log())
    assert (per_token >= 0).all()
    assert float((p * per_token).sum()) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-12)


def test_grpo_adds_beta_times_kl_and_needs_the_reference():
    logps = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    reference = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    plain = grpo_token_losses(logps, logps, torch.tensor([0.5], dtype=torch.float64))
    with_kl = grpo_token_losses(
        logps, logps, torch.tensor([0.5], dtype=torch.float64), beta=0.04, reference_logps=reference
    )
    assert torch.allclose(with_kl.losses - plain.losses, 0.04 * k3_kl(logps, reference))
    with pytest.raises(ValueError, match="needs the reference"):
        grpo_token_losses(logps, logps, torch.tensor([0.5]), beta=0.1)


def test_both_normalisations_are_exact_across_accumulated_micro_batches():
    torch.manual_seed(0)
    losses = torch.randn(6, 10, dtype=torch.float64)
    mask = torch.zeros(6, 10)
    for row, length in enumerate([3, 10, 1, 7, 5, 2]):
        mask[row, 10 - length :] = 1
    for normalisation in ("token", "sequence"):
        whole = normalised_loss(losses, mask, normalisation)
        parts = sum(
            normalised_loss(
                losses[rows], mask[rows], normalisation, global_tokens=mask.sum(), global_sequences=6
            )
            for rows in (slice(0, 2), slice(2, 3), slice(3, 6))
        )
        assert float(parts) == pytest.approx(float(whole), rel=1e-12)
    token_mean = (losses * mask).sum() / mask.sum()
    sequence_mean = torch.stack([losses[r][mask[r].bool()].mean() for r in range(6)]).mean()
    assert float(normalised_loss(losses, mask, "token")) == pytest.approx(float(token_mean))
    assert float(normalised_loss(losses, mask, "sequence")) == pytest.approx(float(sequence_mean))


def test_gae_matches_the_backward_recursion_on_each_response():
    torch.manual_seed(1)
    rewards, values = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    mask = torch.zeros(3, 8)
    spans = [(2, 8), (0, 5), (3, 4)]  # prompt before, padding after
    for row, (start, stop) in enumerate(spans):
        mask[row, start:stop] = 1
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row, (start, stop) in enumerate(spans):
        running, expected = 0.0, {}
        for t in reversed(range(start, stop)):
            next_value = float(values[row, t + 1]) if t + 1 < stop else 0.0
            delta = float(rewards[row, t]) + 0.9 * next_value - float(values[row, t])
            running = delta + 0.9 * 0.8 * running
            expected[t] = running
        for t in range(8):
            assert float(advantages[row, t]) == pytest.approx(expected.get(t, 0.0), abs=1e-12)
        assert torch.allclose(returns[row, start:stop], advantages[row, start:stop] + values[row, start:stop])


def test_whitening_and_the_clipped_value_loss():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    whitened = masked_whiten(values, mask)
    assert float(whitened[0, :3].mean()) == pytest.approx(0.0, abs=1e-12)
    assert float(whitened[0, :3].std()) == pytest.approx(1.0, rel=1e-6)
    unshifted = masked_whiten(values, mask, shift_mean=False)
    assert float(unshifted[0, :3].mean()) == pytest.approx(2.0, rel=1e-9)

    new = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    old = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    returns = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    loss, clipped = clipped_value_loss(new, old, returns, cliprange_value=0.2)
    # v=0 (clipped to 0.3): max(1, 0.49) = 1; v=1 (clipped to 0.7): max(1, 0.49) = 1; v=0.5 exact
    assert torch.allclose(loss, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert clipped.tolist() == [False, False, False]
    assert math.isclose(
        float(clipped_value_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]))[0]), 0.5
    )

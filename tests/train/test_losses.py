"""Each loss formula in float64 against a scalar implementation written here from the paper."""

from __future__ import annotations

import math

import pytest
import torch

from ulysses_pro.train import losses as L


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _batch(seed=0, n=6, reference=True):
    g = torch.Generator().manual_seed(seed)
    lengths_c = torch.randint(3, 40, (n,), generator=g).double()
    lengths_r = torch.randint(3, 40, (n,), generator=g).double()
    # per-token log-probs in (-3, -0.01): sums scale with the lengths
    chosen = -(torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.01) * lengths_c
    rejected = -(torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.01) * lengths_r
    ref_c = chosen + torch.randn(n, generator=g, dtype=torch.float64)
    ref_r = rejected + torch.randn(n, generator=g, dtype=torch.float64)
    return L.PreferenceBatch(
        chosen, rejected, lengths_c, lengths_r, ref_c if reference else None, ref_r if reference else None
    )


def _rows(batch):
    for i in range(batch.chosen_logps.numel()):
        yield (
            float(batch.chosen_logps[i]),
            float(batch.rejected_logps[i]),
            float(batch.chosen_lengths[i]),
            float(batch.rejected_lengths[i]),
            float(batch.reference_chosen_logps[i]) if batch.reference_chosen_logps is not None else None,
            float(batch.reference_rejected_logps[i]) if batch.reference_rejected_logps is not None else None,
        )


def reference_loss(loss_type, batch, beta, smoothing=0.0, gamma=0.5):
    out = []
    for pc, pr, lc, lr, rc, rr in _rows(batch):
        if loss_type == "sigmoid":
            z = beta * ((pc - rc) - (pr - rr))
            out.append(-(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z))
        elif loss_type == "hinge":
            out.append(max(0.0, 1 - beta * ((pc - rc) - (pr - rr))))
        elif loss_type == "ipo":
            out.append(((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2)
        elif loss_type == "simpo":
            out.append(-log_sigmoid(beta * (pc / lc - pr / lr) - gamma))
        elif loss_type == "orpo":
            ac, ar = pc / lc, pr / lr
            odds_c, odds_r = math.exp(ac) / (1 - math.exp(ac)), math.exp(ar) / (1 - math.exp(ar))
            out.append(-ac - beta * log_sigmoid(math.log(odds_c / odds_r)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("loss_type", L.PREFERENCE_LOSSES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_preference_losses_match_the_published_formulas(loss_type, beta):
    batch = _batch(reference=loss_type not in L.REFERENCE_FREE_LOSSES)
    got = L.preference_loss(batch, loss_type, beta, label_smoothing=0.0, simpo_gamma=0.7).losses
    torch.testing.assert_close(got, reference_loss(loss_type, batch, beta, gamma=0.7), rtol=1e-12, atol=1e-12)


def test_label_smoothing_for_sigmoid():
    batch = _batch(seed=1)
    got = L.preference_loss(batch, "sigmoid", 0.2, label_smoothing=0.1).losses
    torch.testing.assert_close(
        got, reference_loss("sigmoid", batch, 0.2, smoothing=0.1), rtol=1e-12, atol=1e-12
    )


def test_policy_equal_to_reference_gives_log_two():
    batch = _batch()
    same = L.PreferenceBatch(
        batch.chosen_logps,
        batch.rejected_logps,
        batch.chosen_lengths,
        batch.rejected_lengths,
        batch.chosen_logps.clone(),
        batch.rejected_logps.clone(),
    )
    losses = L.preference_loss(same, "sigmoid", 0.1).losses
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)), atol=1e-6, rtol=0)


def test_bco_mixing_and_sft_term():
    batch, beta = _batch(seed=2), 0.3
    got = L.preference_loss(batch, "sigmoid", beta, bco_weight=0.5, ftx=0.25).losses
    rows = list(_rows(batch))
    rewards = [beta * (pc - rc) for pc, _, _, _, rc, _ in rows] + [
        beta * (pr - rr) for _, pr, _, _, _, rr in rows
    ]
    delta = sum(rewards) / len(rewards)
    expected = []
    for sigmoid, (pc, pr, lc, _, rc, rr) in zip(reference_loss("sigmoid", batch, beta), rows):
        bco = -log_sigmoid(beta * (pc - rc) - delta) - log_sigmoid(-(beta * (pr - rr) - delta))
        expected.append(float(sigmoid) + 0.5 * bco + 0.25 * (-pc / lc))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_reference_losses_refuse_missing_reference_logps():
    with pytest.raises(ValueError, match="reference"):
        L.preference_loss(_batch(reference=False), "sigmoid", 0.1)
    with pytest.raises(ValueError, match="unknown pref_loss"):
        L.preference_loss(_batch(), "dpo", 0.1)


def test_kto_with_clamped_detached_kl():
    g = torch.Generator().manual_seed(5)
    policy = (-torch.rand(8, generator=g, dtype=torch.float64) * 30).requires_grad_(True)
    reference = policy.detach() + torch.randn(8, generator=g, dtype=torch.float64)
    desirable = torch.tensor([True, False] * 4)
    policy_kl = (-torch.rand(8, generator=g, dtype=torch.float64) * 30).requires_grad_(True)
    beta, wd, wu = 0.2, 1.5, 0.7
    for shift in (2.0, -2.0):  # a positive KL estimate, and a negative one that clamps to 0
        reference_kl = policy_kl.detach() - shift
        got, _ = L.kto_loss(
            policy, reference, desirable, L.kto_reference_point(policy_kl, reference_kl), beta, wd, wu
        )
        z0 = max(0.0, shift)
        expected = []
        for p, r, d in zip(policy.detach().tolist(), reference.tolist(), desirable.tolist()):
            ratio = p - r
            value = (
                1 / (1 + math.exp(-beta * (ratio - z0))) if d else 1 / (1 + math.exp(-beta * (z0 - ratio)))
            )
            expected.append((wd if d else wu) * (1 - value))
        torch.testing.assert_close(
            got.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12
        )
        got.sum().backward()
        assert policy.grad is not None
        assert policy_kl.grad is None  # the reference point is detached


def test_pairwise_reward_loss():
    chosen = torch.tensor([1.0, -0.5, 3.0], dtype=torch.float64)
    rejected = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    expected = torch.tensor(
        [-log_sigmoid(c - r) for c, r in zip(chosen.tolist(), rejected.tolist())], dtype=torch.float64
    )
    torch.testing.assert_close(L.pairwise_reward_loss(chosen, rejected), expected, rtol=1e-12, atol=1e-12)

"""Preference, KTO and reward losses as pure functions: per-sequence tensors in, tensors out.

Inputs are per-sequence log-probability *sums* (already summed over the SP group, contract 7) and
token counts; nothing here knows about ranks, models or batches. Every function returns per-example
losses (shape (batch,)) so the trainer decides how to reduce them.

Formulas:
- sigmoid DPO: Rafailov et al. 2023, "Direct Preference Optimization", eq. 7; label smoothing as in
  conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences").
- hinge: SLiC-HF, Zhao et al. 2023, "Calibrating Sequence Likelihood Improves Conditional Language
  Generation", applied to the DPO log-ratio margin.
- ipo: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", eq. 17, on length-averaged log-probs.
- simpo: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
  eq. 6 (length-averaged, margin gamma, no reference).
- orpo: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
  eqs. 4-7 (length-averaged log-probs, NLL of the chosen answer plus beta x odds-ratio loss).
- bco: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
  reward shift delta = running mean of the batches' mean rewards (TRL's RunningMoments, as
  LLaMA-Factory uses it), detached.
- kto: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8,
  with the reference point z0 estimated from mismatched prompt/completion pairs, clamped at 0.
- reward model: Ouyang et al. 2022 (InstructGPT), eq. 1, pairwise -log sigmoid(r_c - r_r).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config.args import PREFERENCE_LOSSES

REFERENCE_FREE_LOSSES = ("simpo", "orpo")


@dataclass(frozen=True)
class PreferenceBatch:
    """Per-example sums of log-probs over answer tokens, and the answers' token counts."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    reference_chosen_logps: torch.Tensor | None = None
    reference_rejected_logps: torch.Tensor | None = None


@dataclass(frozen=True)
class PreferenceLoss:
    """Per-example losses plus the rewards TRL-style logs report."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _averaged(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    return batch.chosen_logps / batch.chosen_lengths, batch.rejected_logps / batch.rejected_lengths


def _log_ratios(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    if batch.reference_chosen_logps is None or batch.reference_rejected_logps is None:
        raise ValueError("this preference loss needs reference log-probs")
    return (
        batch.chosen_logps - batch.reference_chosen_logps,
        batch.rejected_logps - batch.reference_rejected_logps,
    )


def sigmoid_loss(batch: PreferenceBatch, beta: float, label_smoothing: float = 0.0) -> PreferenceLoss:
    chosen, rejected = _log_ratios(batch)
    margin = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def hinge_loss(batch: PreferenceBatch, beta: float) -> PreferenceLoss:
    chosen, rejected = _log_ratios(batch)
    losses = torch.relu(1 - beta * (chosen - rejected))
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def ipo_loss(batch: PreferenceBatch, beta: float) -> PreferenceLoss:
    # IPO regresses the length-averaged log-ratio margin onto 1 / (2 beta).
    chosen, rejected = _log_ratios(batch)
    chosen, rejected = chosen / batch.chosen_lengths, rejected / batch.rejected_lengths
    losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def simpo_loss(batch: PreferenceBatch, beta: float, gamma: float) -> PreferenceLoss:
    chosen, rejected = _averaged(batch)
    losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def orpo_loss(batch: PreferenceBatch, beta: float) -> PreferenceLoss:
    chosen, rejected = _averaged(batch)
    # log odds(p) = log p - log(1 - p), with log(1 - p) computed stably from log p < 0.
    log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    losses = -chosen - beta * F.logsigmoid(log_odds)
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def bco_loss(
    batch: PreferenceBatch, beta: float, baseline: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Per-example BCO loss on the DPO log-ratios. The shift delta is `baseline(mean reward of the
    batch)`: the batch mean itself by default; the trainer passes a running mean over steps and
    DP ranks (`parallel.reduce.RunningMean`), as TRL and LLaMA-Factory do."""
    chosen, rejected = _log_ratios(batch)
    chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
    delta = torch.cat([chosen_rewards, rejected_rewards]).mean().detach()
    if baseline is not None:
        delta = baseline(delta)
    return -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))


def preference_loss(
    batch: PreferenceBatch,
    loss_type: str,
    beta: float = 0.1,
    *,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    bco_weight: float = 0.0,
    bco_baseline: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ftx: float = 0.0,
) -> PreferenceLoss:
    """The configured `pref_loss`, plus BCO mixing (`pref_bco_weight`) and the SFT term (`pref_ftx`)."""
    if loss_type == "sigmoid":
        result = sigmoid_loss(batch, beta, label_smoothing)
    elif loss_type == "hinge":
        result = hinge_loss(batch, beta)
    elif loss_type == "ipo":
        result = ipo_loss(batch, beta)
    elif loss_type == "simpo":
        result = simpo_loss(batch, beta, simpo_gamma)
    elif loss_type == "orpo":
        result = orpo_loss(batch, beta)
    else:
        raise ValueError(f"unknown pref_loss {loss_type!r}; choose from {', '.join(PREFERENCE_LOSSES)}")
    losses = result.losses
    if bco_weight > 0:
        losses = losses + bco_weight * bco_loss(batch, beta, bco_baseline)
    if ftx > 0:
        # SFT regulariser: the length-normalised NLL of the chosen answer.
        losses = losses + ftx * (-batch.chosen_logps / batch.chosen_lengths)
    return PreferenceLoss(losses, result.chosen_rewards, result.rejected_rewards)


def kto_reference_point(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's z0: the mean log-ratio of mismatched (prompt, completion) pairs, clamped at 0, detached."""
    return (policy_kl_logps - reference_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO losses and rewards, given the reference point z0 (see `kto_reference_point`;
    the trainer averages it over every rank's mismatched pairs)."""
    kl = reference_point.detach()
    log_ratio = policy_logps - reference_logps
    value = torch.where(
        desirable, torch.sigmoid(beta * (log_ratio - kl)), torch.sigmoid(beta * (kl - log_ratio))
    )
    weight = torch.where(
        desirable,
        torch.as_tensor(desirable_weight, dtype=value.dtype, device=value.device),
        torch.as_tensor(undesirable_weight, dtype=value.dtype, device=value.device),
    )
    return weight * (1 - value), beta * log_ratio.detach()


def pairwise_reward_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry loss of a scalar reward model."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)

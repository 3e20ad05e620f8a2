"""The per-token objectives of GRPO and PPO as pure functions of log-probs, advantages and values.

Sources of the formulas:
- GRPO's group-normalised advantage (r - mean_group) / (std_group + eps): Shao et al. 2024,
  "DeepSeekMath", section 4.1; the unbiased group std and eps = 1e-4 are TRL's GRPOTrainer's.
- The clipped surrogate -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A): Schulman et al. 2017
  (PPO), with DAPO's separate upper bound (Yu et al. 2025, "DAPO", clip-higher).
- The KL estimate exp(q - p) - (q - p) - 1 of KL(pi || pi_ref) per token (p = log pi, q = log
  pi_ref): Schulman's "k3" estimator (http://joschu.net/blog/kl-approx.html), as DeepSeekMath uses.
- Generalised advantage estimation: Schulman et al. 2016 (GAE); PPO's clipped value loss and
  reward whitening as in TRL's PPO (the trainer LLaMA-Factory's `stage: ppo` runs).

Sequences arrive whole here (rows x tokens, a mask for the response tokens): under sequence
parallelism the trainer gathers these few scalars per token over the SP group first (contract 7
extended), so every statistic below sees the full sequence and the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Each completion's reward minus its prompt group's mean, over the group's std when `scale`.
    `rewards` holds `num_generations` consecutive completions per prompt."""
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


@dataclass
class TokenObjective:
    """Per-token losses and what is logged about them (all rows x tokens)."""

    losses: torch.Tensor
    clipped: torch.Tensor  # bool: the ratio left the trust region in the direction that stops the gradient
    kl: torch.Tensor | None = None


def clipped_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> TokenObjective:
    """-min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) per token, rho = exp(logp - old_logp).
    `advantages`: one per row (GRPO) or per token (PPO)."""
    high = epsilon if epsilon_high is None else epsilon_high
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high) * advantages
    return TokenObjective(losses=-torch.minimum(unclipped, clipped), clipped=clipped < unclipped)


def k3_kl(logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref), non-negative, exact in expectation."""
    delta = reference_logps - logps
    return torch.exp(delta) - delta - 1


def grpo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    reference_logps: torch.Tensor | None = None,
) -> TokenObjective:
    """GRPO's per-token loss: the clipped surrogate plus beta x the k3 KL to the reference."""
    objective = clipped_surrogate(logps, old_logps, advantages, epsilon, epsilon_high)
    if beta:
        if reference_logps is None:
            raise ValueError("beta > 0 needs the reference model's log-probs")
        objective.kl = k3_kl(logps, reference_logps)
        objective.losses = objective.losses + beta * objective.kl
    return objective


LOSS_NORMALISATIONS = ("token", "sequence")


def normalised_loss(
    token_losses: torch.Tensor,
    mask: torch.Tensor,
    normalisation: str,
    *,
    global_tokens: torch.Tensor | float | None = None,
    global_sequences: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The batch loss from per-token losses, named explicitly:
    - `token`: sum of every response token's loss over the number of response tokens in the global
      batch (DAPO's token mean: long answers weigh by their length);
    - `sequence`: each sequence's token mean, summed, over the number of sequences in the global
      batch (GRPO's original normalisation).
    `global_tokens` / `global_sequences` are the counts over every micro-batch and rank of the
    optimizer step (they default to this batch's own), so accumulated micro-batches sum to the
    exact loss of the whole step."""
    mask = mask.to(token_losses.dtype)
    if normalisation == "token":
        count = mask.sum() if global_tokens is None else global_tokens
        return (token_losses * mask).sum() / count
    if normalisation == "sequence":
        per_sequence = (token_losses * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
        count = per_sequence.numel() if global_sequences is None else global_sequences
        return per_sequence.sum() / count
    raise ValueError(f"loss normalisation {normalisation!r}: expected one of {LOSS_NORMALISATIONS}")


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    total: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(values - mean) / std over the masked entries (the unbiased variance, as TRL's whiten).
    `total` sums each statistic over the ranks that share the batch (the DP group), so every rank
    whitens with the statistics of the global batch."""
    total = total or (lambda x: x)
    mask = mask.to(values.dtype)
    count = total(mask.sum())
    mean = total((values * mask).sum()) / count
    variance = total((((values - mean) * mask) ** 2).sum()) / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    return whitened if shift_mean else whitened + mean


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) per response token by generalised advantage estimation, each row's
    recursion running backwards over its response tokens (masked positions carry nothing)."""
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m + running * (1 - m)
        advantages[:, t] = running * m
        next_value = values[:, t] * m + next_value * (1 - m)
    return advantages, advantages + values * mask


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, cliprange_value: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token value loss 0.5 max((v - R)^2, (clip(v, v_old +- c) - R)^2), and where the
    clipped term won."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    plain, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(plain, clipped), clipped > plain

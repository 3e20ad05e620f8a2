"""PPO's two running statistics, kept per run and saved with each checkpoint.

- The adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
  Preferences", section 2.2): the coefficient moves by at most 20% x n / horizon per update, up when
  the measured KL is above the target, down when below. Initial value 0.2 and horizon 10,000 are
  the defaults of TRL's PPOConfig, the trainer LLaMA-Factory's `ppo_target` feeds.
- Running moments of the reward-model scores (`ppo_score_norm`), combined batch by batch with the
  parallel-variance formula (Chan et al. 1979), as TRL's RunningMoments: scores become
  (score - running mean) / (running std + eps).
Both are updated with statistics already summed over the DP group, so every rank holds the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class AdaptiveKLController:
    def __init__(self, init_coef: float = 0.2, target: float = 6.0, horizon: int = 10_000) -> None:
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class RunningMoments:
    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24
        self.std = 1.0

    def update(self, scores: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Fold in this PPO step's scores; `total` sums over the DP group."""
        scores = scores.double()
        count = float(total(torch.tensor(float(scores.numel()), dtype=torch.float64, device=scores.device)))
        mean = float(total(scores.sum())) / count
        var = float(total(((scores - mean) ** 2).sum())) / count  # biased within the batch, as TRL
        delta = mean - self.mean
        grand = self.count + count
        combined = self.var * self.count + delta**2 * self.count * count / grand + var * count
        self.mean += delta * count / grand
        self.var = combined / grand
        self.std = (self.var * grand / max(grand - 1, 1e-24)) ** 0.5
        self.count = grand

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.mean) / (self.std + torch.finfo(torch.float32).eps)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count, self.std = state["mean"], state["var"], state["count"], state["std"]

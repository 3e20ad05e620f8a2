"""Reward model: a scalar value head trained with the pairwise Bradley-Terry loss."""

from __future__ import annotations

import torch

from ...config import RunConfig
from ...models.loader import adapter_paths
from ...models.value_head import attach_value_head, load_value_head, value_head_output
from ..losses import pairwise_reward_loss
from ..sequence_trainer import SequenceLossTrainer
from ..value_head_saving import ValueHeadSaving
from ..workflow import run_sequence_stage


class RewardTrainer(ValueHeadSaving, SequenceLossTrainer):
    """Rows [:b] chosen, [b:] rejected; the reward is the value head's score at the last real token."""

    def num_sequences(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def rewards(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Score of each row, read wherever its last real token lives (summed over the SP group)."""
        batch = dict(batch)
        last_token = batch.pop("last_token_mask")
        batch.pop("shift_labels")
        with self.embedding_noise(model, batch), value_head_output(model):
            scores = model(**batch, use_cache=False).logits
        return self.sequence_sum((scores * last_token.to(scores.dtype)).sum(dim=-1))

    def sequence_losses(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pairs = self.num_sequences(batch)
        rewards = self.rewards(model, batch)
        chosen, rejected = rewards[:pairs], rewards[pairs:]
        metrics = self.metrics_for(model)
        metrics.record("rewards/chosen", chosen)
        metrics.record("rewards/rejected", rejected)
        metrics.record("rewards/accuracies", (chosen > rejected).float())
        metrics.record("rewards/margins", chosen - rejected)
        return pairwise_reward_loss(chosen, rejected)


def _prepare_reward_model(model, config: RunConfig):
    attach_value_head(model, seed=config.training.seed)
    adapters = adapter_paths(config.model)
    if adapters:
        load_value_head(model, adapters[-1])  # continue training a saved reward model
    return model


def run_rm(config: RunConfig, callbacks: list | None = None):
    """Train a reward model on preference pairs."""
    return run_sequence_stage(config, callbacks, RewardTrainer, prepare_model=_prepare_reward_model)

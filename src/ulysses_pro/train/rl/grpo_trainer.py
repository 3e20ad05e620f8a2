"""GRPO's Trainer: sample a group of completions per prompt, score them, train on the whole step.

Per optimizer step, `get_batch_samples` takes the step's prompt batches (one per accumulation
micro-batch), samples `num_generations` completions of each with plain attention (`rollout.py`),
scores them with the reward functions and turns the rewards into group-normalised advantages.
Every micro-batch is then an ordinary SP-split batch of prompt + completion rows whose targets are
the completion tokens; so the normalising count (completion tokens, or completions, of the whole
step over every DP rank) is known before the first backward, and accumulation is exact.

Under SP the per-token log-probs stay sharded (tiled head, no full-vocabulary logits): the token
normalisation is contract 6 as is; the sequence normalisation sums each completion's token losses
and lengths over the SP group before dividing (contract 7), like the DPO family.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ...data.collators import PaddingCollator
from ...models.memory import token_loss_head
from ...parallel.reduce import (
    IGNORE_INDEX,
    count_targets,
    global_sum,
    normalized_token_loss,
)
from ...parallel.sharding import SequenceParallelCollator
from ..metrics import SequenceMetrics
from ..trainer import UlyssesTrainer
from .objectives import group_advantages, grpo_token_losses
from .rewards import score
from .rollout import Rollout, roll_out

logger = logging.getLogger(__name__)

ADVANTAGES = "advantages"
SHOWN_SAMPLES = 2  # completions printed at each logging step


class GrpoTrainer(UlyssesTrainer):
    """UlyssesTrainer whose micro-batches are sampled, scored completions of the dataset's prompts."""

    # The loader yields prompt rows (DP-sharded, the same on every SP rank); `rollout_batch` splits.
    loader_splits_sequences = False

    def __init__(self, *args: Any, grpo=None, reference=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grpo = grpo  # FinetuningArguments: num_generations, epsilon(s), beta, loss_normalization, ...
        self.reference = reference.to(self.args.device) if reference is not None else None
        self.train_metrics = SequenceMetrics(self.args.device)
        self.metric_sources.append(self.train_metrics)
        # Set by the stage once SP is wired (stages/grpo.py): what samples and what scores.
        self.sampler = None
        self.reward_functions: list = []
        self.stop_ids: list[int] = []
        self._shown: list[tuple[Rollout, float]] = []

    # -- rollouts ----------------------------------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        prompt_batches = []
        for _ in range(num_batches):
            try:
                prompt_batches.append(next(epoch_iterator))
            except StopIteration:
                break
        step = self.state.global_step
        batches = [
            self.rollout_batch(prompts, step * num_batches + index)
            for index, prompts in enumerate(prompt_batches)
        ]
        return batches, self._global_count(batches, device)

    def rollout_batch(self, prompts, sample_step: int) -> dict[str, torch.Tensor]:
        """Sample, score and collate one micro-batch: prompts x num_generations rows, SP-split."""
        generations = self.grpo.num_generations
        rollouts = roll_out(
            self.sampler,
            self.model,
            prompts,
            generations,
            sample_step,
            self.processing_class,
            self.stop_ids,
            self._sp_group,
        )
        rewards, per_function = score(self.reward_functions, rollouts)
        rewards = torch.tensor(rewards, dtype=torch.float32)
        advantages = group_advantages(rewards, generations, scale=self.grpo.scale_rewards)
        self._record_rollouts(rollouts, rewards, per_function)
        rows = [
            {
                "input_ids": r.prompt.prompt_ids + r.completion_ids,
                # Shifted once over the whole sequence (contract 2): position t predicts token t + 1.
                "shift_labels": [IGNORE_INDEX] * (len(r.prompt.prompt_ids) - 1)
                + r.completion_ids
                + [IGNORE_INDEX],
            }
            for r in rollouts
        ]
        pad = self.processing_class.pad_token_id
        collate = PaddingCollator(pad)
        if self._sp_group is not None:
            collate = SequenceParallelCollator(collate, pad, self.sp_layout)
        batch = collate(rows)
        batch[ADVANTAGES] = advantages
        return batch

    def _record_rollouts(self, rollouts: list[Rollout], rewards: torch.Tensor, per_function: dict) -> None:
        metrics = self.train_metrics
        metrics.record("reward", rewards)
        grouped = rewards.view(-1, self.grpo.num_generations)
        metrics.record("reward_std", grouped.std(dim=1))
        for name, values in per_function.items():
            metrics.record(f"rewards/{name.rpartition(':')[2]}", torch.tensor(values))
        metrics.record(
            "completions/mean_length", torch.tensor([float(len(r.completion_ids)) for r in rollouts])
        )
        metrics.record("completions/clipped_ratio", torch.tensor([float(r.truncated) for r in rollouts]))
        self._shown = list(zip(rollouts[:SHOWN_SAMPLES], rewards[:SHOWN_SAMPLES].tolist()))

    def _global_count(self, batches: list[dict[str, torch.Tensor]], device) -> torch.Tensor | None:
        """What the step's loss is normalised by: its completion tokens, or its completions, over every
        micro-batch and DP rank (SP ranks hold shards of the same rows)."""
        if not batches:
            return None
        if self.grpo.loss_normalization == "token":
            local = sum(count_targets(b["shift_labels"]) for b in batches)
            return global_sum(torch.as_tensor(local, device=device))
        return self._global_sequence_count(sum(b["input_ids"].shape[0] for b in batches), device)

    # -- the update --------------------------------------------------------------------------------

    def token_logps(self, model, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """log p of each target token of this rank's shard (0 where there is none), from the tiled head."""
        with token_loss_head(model, targets, head_options=self.loss_head):
            return -model(**batch, use_cache=False).logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        advantages = inputs.pop(ADVANTAGES)
        targets = inputs.pop("shift_labels")
        inputs.pop("document_lengths", None)
        mask = targets.ne(IGNORE_INDEX)
        logps = self.token_logps(model, inputs, targets)
        reference_logps = None
        if self.grpo.beta:
            with torch.no_grad(), self.reference.scoring(model) as reference:
                reference_logps = self.token_logps(reference, inputs, targets)
        # One update per rollout: the sampling policy is the current one, so the ratio is 1 in value
        # and its gradient is the policy gradient (GRPO with a single iteration, as TRL's default).
        objective = grpo_token_losses(
            logps,
            logps.detach(),
            advantages.to(logps.dtype),
            epsilon=self.grpo.epsilon,
            epsilon_high=self.grpo.epsilon_high,
            beta=self.grpo.beta,
            reference_logps=reference_logps,
        )
        weights = mask.to(logps.dtype)
        token_losses = objective.losses * weights
        if num_items_in_batch is None:
            num_items_in_batch = self._global_count(
                [{"shift_labels": targets, "input_ids": inputs["input_ids"]}], logps.device
            )
        if self.grpo.loss_normalization == "token":
            total = token_losses.sum()
        else:
            per_sequence = self.sequence_sum(token_losses.sum(dim=-1))
            lengths = self.sequence_count(mask.sum(dim=-1)).clamp(min=1)
            total = (per_sequence / lengths).sum()
        self._record_token_metrics(objective, weights)
        loss = normalized_token_loss(total, num_items_in_batch, self.gradient_average_world)
        return (loss, None) if return_outputs else loss

    def _record_token_metrics(self, objective, weights: torch.Tensor) -> None:
        # Token-weighted over every rank: each SP rank adds its own shard's tokens.
        count = weights.sum()
        self.train_metrics.add("clip_ratio", (objective.clipped.to(weights.dtype) * weights).sum(), count)
        if objective.kl is not None:
            self.train_metrics.add("kl", (objective.kl * weights).sum(), count)

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        # Sequence normalisation: every SP rank holds the same loss, back-propagated W x; the logged
        # value is the mean over ranks, so divide it (not the gradient) by the SP size.
        return loss / self.loss_replicas if self.grpo.loss_normalization == "sequence" else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._shown and self.is_world_process_zero():
            for rollout, reward in self._shown:
                logger.info(
                    "step %d sample (reward %.3f)\n  prompt:     %s\n  completion: %s",
                    self.state.global_step,
                    reward,
                    rollout.prompt.prompt[-200:],
                    rollout.completion[:300],
                )
        super().log(logs, start_time)

"""GRPO's Trainer: sample a group of completions per prompt, score them, train on the whole step.

Per rollout group (GA prompt micro-batches, one optimizer step's worth), `make_experience` samples
`num_generations` completions of each prompt with plain attention (`rollout.py`), scores them with
the reward functions and/or a reward model, and turns the rewards into group-normalised
advantages. Every micro-batch is then an ordinary SP-split batch of prompt + completion rows whose
targets are the completion tokens; so the normalising count (completion tokens, or completions, of
the whole step over every DP rank) is known before the first backward, and accumulation is exact.
With `num_iterations` > 1 (TRL's key) the group is trained on that many times, against the
log-probs of the policy that sampled it (computed once, under SP): the ratio then leaves 1 and
`epsilon` / `epsilon_high` clip it.

DAPO's overlong handling (`overlong.py`): completions cut by the length limit can be left out of
the loss (`mask_truncated_completions`) and/or punished by a reward that ramps down over the last
`overlong_buffer_len` tokens before the limit.

Under SP the per-token log-probs stay sharded (tiled head, no full-vocabulary logits): the token
normalisation is contract 6 as is; the sequence normalisation sums each completion's token losses
and lengths over the SP group before dividing (contract 7), like the DPO family.
"""

from __future__ import annotations

from typing import Any

import torch

from ...parallel.reduce import IGNORE_INDEX, count_targets, global_sum, normalized_token_loss
from .objectives import group_advantages, grpo_token_losses, k3_kl
from .overlong import soft_overlong_penalty
from .rewards import score_once_per_group
from .rollout_trainer import RolloutTrainer, completion_row

ADVANTAGES = "advantages"
OLD_LOGPS = "old_logps"


class GrpoTrainer(RolloutTrainer):
    """RolloutTrainer whose micro-batches are groups of scored completions per prompt."""

    experience_keys = (ADVANTAGES, OLD_LOGPS)

    def __init__(self, *args: Any, grpo=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grpo = grpo  # FinetuningArguments: num_generations, epsilon(s), beta, loss_normalization, ...
        self.rollout_passes = grpo.num_iterations
        self.reward_functions: list = []  # set by the stage
        self.reward_model_weight = 1.0

    # -- rollouts ----------------------------------------------------------------------------------

    def make_experience(self, prompt_batches: list) -> list[dict[str, torch.Tensor]]:
        first = self.rollout_index * len(prompt_batches)
        batches = [self.rollout_batch(prompts, first + index) for index, prompts in enumerate(prompt_batches)]
        if self.rollout_passes > 1:
            for batch in batches:
                batch[OLD_LOGPS] = self._sampling_logps(batch)
        return [batch for _ in range(self.rollout_passes) for batch in batches]

    @torch.no_grad()
    def _sampling_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """This rank's shard of the sampling policy's log-probs (the same forward as training)."""
        inputs = {k: v for k, v in batch.items() if k not in (ADVANTAGES, "shift_labels")}
        with self.evaluating():
            return self.token_logps(self.model, inputs, batch["shift_labels"]).float()

    def rollout_batch(self, prompts, sample_step: int) -> dict[str, torch.Tensor]:
        """Sample, score and collate one micro-batch: prompts x num_generations rows, SP-split."""
        generations = self.grpo.num_generations
        rollouts = self.sample(prompts, generations, sample_step)
        rewards, per_function = self.score_rollouts(rollouts, len(rollouts))
        advantages = group_advantages(rewards, generations, scale=self.grpo.scale_rewards)
        self.record_completions(rollouts, rewards)
        self.train_metrics.record("reward_std", rewards.view(-1, generations).std(dim=1))
        for name, values in per_function.items():
            self.train_metrics.record(f"rewards/{name.rpartition(':')[2]}", torch.tensor(values))
        masked = self.grpo.mask_truncated_completions
        batch = self.collate([completion_row(r, trained=not (masked and r.truncated)) for r in rollouts])
        batch[ADVANTAGES] = advantages.to(batch["input_ids"].device)
        return batch

    def score_rollouts(self, rollouts: list, counted: int) -> tuple[torch.Tensor, dict[str, list]]:
        """(reward, its parts by name) of the first `counted` completions: the weighted reward
        functions (run once per SP group), the reward model's score, DAPO's overlong penalty. Training
        scores every row; an evaluation's padding rows are read only by the reward model, whose
        forward every rank of the SP group must run."""
        scored = rollouts[:counted]
        rewards, parts = (
            score_once_per_group(self.reward_functions, scored, self._sp_group)
            if self.reward_functions and scored
            else ([0.0] * len(scored), {})
        )
        rewards = torch.tensor(rewards, dtype=torch.float32)
        if self.reward_model is not None:
            model_scores = self.reward_model_scores(rollouts).cpu()[:counted]
            parts["reward_model"] = model_scores.tolist()
            rewards = rewards + self.reward_model_weight * model_scores
        if self.grpo.overlong_buffer_len:
            penalties = soft_overlong_penalty(
                [len(r.completion_ids) for r in scored],
                [r.budget if r.budget is not None else len(r.completion_ids) for r in scored],
                self.grpo.overlong_buffer_len,
                self.grpo.overlong_penalty_factor,
            )
            parts["overlong_penalty"] = penalties
            rewards = rewards + torch.tensor(penalties, dtype=rewards.dtype)
        return rewards, parts

    def record_held_out_kl(self, rollouts: list, counted: int, metrics) -> None:
        """Training's `kl`: the k3 estimate per completion token, token-weighted (each SP rank adds its
        shard's tokens). Without `beta` there is no reference, and no `eval_kl`."""
        if self.reference is None:
            return
        logps, reference_logps, mask = self.held_out_logps(rollouts, counted)
        weights = mask.to(logps.dtype)
        metrics.add("kl", (k3_kl(logps, reference_logps) * weights).sum(), weights.sum())

    def items_in(self, batches: list[dict[str, torch.Tensor]], device) -> torch.Tensor | None:
        """What the step's loss is normalised by: its completion tokens, or its completions, over every
        micro-batch and DP rank (SP ranks hold shards of the same rows)."""
        if not batches:
            return None
        if self.grpo.loss_normalization == "token":
            local = sum(count_targets(b["shift_labels"]) for b in batches)
            return global_sum(torch.as_tensor(local, device=device))
        return self._global_sequence_count(sum(b["input_ids"].shape[0] for b in batches), device)

    # -- the update --------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        advantages = inputs.pop(ADVANTAGES)
        old_logps = inputs.pop(OLD_LOGPS, None)
        targets = inputs.pop("shift_labels")
        inputs.pop("document_lengths", None)
        mask = targets.ne(IGNORE_INDEX)
        entropies: list[torch.Tensor] = []
        logps = self.token_logps(model, inputs, targets, entropies)
        self.record_entropy(entropies, mask)
        reference_logps = None
        if self.grpo.beta:
            with torch.no_grad(), self.reference.scoring(model) as reference:
                reference_logps = self.token_logps(reference, inputs, targets)
        # One update per rollout (num_iterations 1, TRL's default): the sampling policy is the current
        # one, so the ratio is 1 in value and its gradient is the policy gradient.
        objective = grpo_token_losses(
            logps,
            logps.detach() if old_logps is None else old_logps.to(logps.dtype),
            advantages.to(logps.dtype),
            epsilon=self.grpo.epsilon,
            epsilon_high=self.grpo.epsilon_high,
            beta=self.grpo.beta,
            reference_logps=reference_logps,
        )
        weights = mask.to(logps.dtype)
        token_losses = objective.losses * weights
        if num_items_in_batch is None:
            num_items_in_batch = self.items_in(
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

"""PPO's Trainer: roll out, score with a reward model, and take `ppo_epochs` passes over the rollouts.

One PPO step (LLaMA-Factory's, i.e. TRL's PPOTrainer.step) = `ppo_buffer_size` x GA prompt
micro-batches rolled out (one completion per prompt), then `ppo_epochs` shuffled passes over them,
each pass `ppo_buffer_size` optimizer updates of GA micro-batches. The experience of a step:
- the policy's log-probs and the critic's values (value head on the policy, same forward), the
  reference's log-probs (adapters off for LoRA, as DPO), under SP, then gathered to whole rows:
  a few floats per token, so GAE's backward recursion sees the whole response on every rank;
- the reward model's score at the last token (`reward_model.py`), optionally normalised by its
  running moments (`ppo_score_norm`);
- per-token rewards -kl_coef x (logp - ref_logp), plus the score on the last response token
  (TRL's `compute_rewards`, kl_penalty "kl"), optionally whitened (`ppo_whiten_rewards`);
- GAE (gamma 1, lambda 0.95, TRL's defaults), returns = advantages + values, advantages whitened.
Every statistic (whitening, score moments, the KL fed to the adaptive controller) is summed over
the DP group, so a step is the same whether its prompts sit on one rank or on many.

The update: the clipped surrogate (cliprange 0.2) plus 0.1 x the clipped value loss (cliprange
0.2), TRL's defaults, summed over response tokens and divided by the response tokens of the whole
optimizer step over every DP rank (contract 6: exact across GA x DP x SP). TRL averages per
mini-batch instead; the two agree when every micro-batch holds the same number of tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from ...models.memory import token_loss_head
from ...models.value_head import values_alongside
from ...parallel.reduce import IGNORE_INDEX, global_sum, normalized_token_loss
from ...parallel.sharding import gather_full_sequence
from ..value_head_saving import ValueHeadSaving
from .controllers import AdaptiveKLController, RunningMoments
from .objectives import clipped_surrogate, clipped_value_loss, gae, masked_whiten
from .rollout_trainer import RolloutTrainer, completion_row, padded

CLIP_RANGE = 0.2  # TRL's PPOConfig cliprange
VALUE_CLIP_RANGE = 0.2  # cliprange_value
VALUE_COEF = 0.1  # vf_coef
GAMMA, LAMBDA = 1.0, 0.95
INITIAL_KL_COEF = 0.2  # init_kl_coef
EXPERIENCE = ("old_logps", "old_values", "returns", "advantages")


class PpoTrainer(ValueHeadSaving, RolloutTrainer):
    """RolloutTrainer with a critic (the policy's value head) and a reward model."""

    experience_keys = EXPERIENCE

    def __init__(self, *args: Any, ppo=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ppo = ppo  # FinetuningArguments: ppo_* keys
        self.rollout_passes = ppo.ppo_epochs
        self.kl_control = AdaptiveKLController(INITIAL_KL_COEF, ppo.ppo_target)
        self.score_moments = RunningMoments()

    def rollout_group(self) -> int:
        return self.ppo.ppo_buffer_size * self.args.gradient_accumulation_steps

    def _dp_total(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks that hold different rows (the DP group)."""
        layout = self.sp_layout
        if layout is None:
            return global_sum(value)
        return global_sum(value, layout.dp_group) if layout.dp_size > 1 else value

    def _whole(self, local: torch.Tensor) -> torch.Tensor:
        return gather_full_sequence(local, self.sp_layout) if self._sp_group is not None else local

    @torch.no_grad()
    def _score_batch(self, prompts, sample_step: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
        """Roll out one micro-batch and read everything the step needs, as whole rows."""
        rollouts = self.sample(prompts, 1, sample_step)
        rows = [completion_row(rollout) for rollout in rollouts]
        batch = self.collate(rows)
        targets = batch.pop("shift_labels")
        model = self.model
        entropies: list[torch.Tensor] = []
        with self.evaluating():
            with (
                token_loss_head(
                    model,
                    targets,
                    head_options=self.loss_head,
                    entropies=entropies,
                    temperature=self.logit_temperature,
                ),
                values_alongside(model),
            ):
                out = model(**batch, use_cache=False).logits
            with self.reference.scoring(model) as reference:
                reference_logps = self.token_logps(reference, batch, targets)
            scores = self.reward_model_scores(rollouts)
        self.record_entropy(entropies, targets.ne(IGNORE_INDEX))
        whole = {
            "logps": self._whole(-out[..., 0].float()),
            "values": self._whole(out[..., 1].float()),
            "reference_logps": self._whole(reference_logps.float()),
            "mask": self._whole(targets.ne(IGNORE_INDEX).to(torch.float32)),
        }
        self.record_completions(rollouts, scores.cpu())
        return rows, {**whole, "scores": scores.float()}

    def score_rollouts(self, rollouts: list, counted: int) -> tuple[torch.Tensor, dict[str, list]]:
        """The reward model's score of the first `counted` completions (training's `reward`: before
        `ppo_score_norm` and the KL penalty); every row is scored (the forward is split over the SP
        group)."""
        return self.reward_model_scores(rollouts).cpu()[:counted], {}

    def record_held_out_kl(self, rollouts: list, counted: int, metrics) -> None:
        """Training's `kl`: per completion, the sum of log p - log p_ref over its tokens (summed over
        the SP group first; every SP rank then records the same values, which cancel in the mean)."""
        logps, reference_logps, mask = self.held_out_logps(rollouts, counted)
        per_completion = self.sequence_sum(((logps - reference_logps) * mask).sum(dim=-1))
        metrics.record("kl", per_completion[:counted])

    def make_experience(self, prompt_batches: list) -> list[dict[str, torch.Tensor]]:
        """A PPO step: roll out every prompt batch, compute advantages and returns over all of them,
        then `ppo_epochs` shuffled passes of training micro-batches."""
        step = self.rollout_index
        scored = [
            self._score_batch(prompts, step * len(prompt_batches) + index)
            for index, prompts in enumerate(prompt_batches)
        ]
        all_scores = torch.cat([parts["scores"] for _, parts in scored])
        if self.ppo.ppo_score_norm:
            self.score_moments.update(all_scores, self._dp_total)
        coef = self.kl_control.value
        per_batch, kl_sums = [], []
        for _, parts in scored:
            mask = parts["mask"]
            kl = (parts["logps"] - parts["reference_logps"]) * mask
            kl_sums.append(kl.sum(dim=-1))
            scores = (
                self.score_moments.normalise(parts["scores"]) if self.ppo.ppo_score_norm else parts["scores"]
            )
            rewards = -coef * kl
            last = mask.cumsum(dim=-1).eq(mask.sum(dim=-1, keepdim=True)) & mask.bool()
            rewards = rewards + last.to(rewards.dtype) * scores[:, None].to(rewards.dtype)
            per_batch.append((rewards, parts["values"] * mask, mask))
        if self.ppo.ppo_whiten_rewards:
            per_batch = self._whiten_over_step(per_batch, shift_mean=False)
        with_gae = []
        for rewards, values, mask in per_batch:
            advantages, returns = gae(rewards, values, mask, GAMMA, LAMBDA)
            with_gae.append((advantages, returns, mask))
        with_gae = self._whiten_over_step(with_gae, shift_mean=True)
        self._adapt_kl_coefficient(torch.cat(kl_sums))
        rows = []
        for (batch_rows, parts), (advantages, returns, _) in zip(scored, with_gae):
            for i, row in enumerate(batch_rows):
                length = len(row["input_ids"])
                rows.append(
                    {
                        "input_ids": row["input_ids"],
                        "shift_labels": row["shift_labels"],
                        "old_logps": parts["logps"][i, :length].tolist(),
                        "old_values": parts["values"][i, :length].tolist(),
                        "returns": returns[i, :length].tolist(),
                        "advantages": advantages[i, :length].tolist(),
                    }
                )
        return self._passes(rows, [len(batch_rows) for batch_rows, _ in scored], step)

    def _whiten_over_step(self, triples: list[tuple], shift_mean: bool) -> list[tuple]:
        """Whiten the first element of each (x, ..., mask) over every response token of the step and
        of every DP rank."""
        flat = torch.cat([t[0][t[-1].bool()] for t in triples])
        whitened = masked_whiten(flat, torch.ones_like(flat), shift_mean=shift_mean, total=self._dp_total)
        out, offset = [], 0
        for t in triples:
            mask = t[-1].bool()
            values = torch.zeros_like(t[0])
            count = int(mask.sum())
            values[mask] = whitened[offset : offset + count]
            offset += count
            out.append((values, *t[1:]))
        return out

    def _adapt_kl_coefficient(self, kl_sums: torch.Tensor) -> None:
        """Adapt the KL coefficient with the step's mean KL per sequence over every DP rank (TRL
        steps it with the step's batch size; here the global number of rollouts)."""
        count = self._dp_total(torch.tensor(float(kl_sums.numel()), device=kl_sums.device))
        mean_kl = float(self._dp_total(kl_sums.sum()) / count)
        self.train_metrics.record("kl", kl_sums.cpu())
        self.train_metrics.record("kl_coef", torch.tensor([self.kl_control.value]))
        self.kl_control.update(mean_kl, int(count))

    def _passes(self, rows: list[dict], sizes: list[int], step: int) -> list[dict[str, torch.Tensor]]:
        """`ppo_epochs` passes over the rows, each in its own seeded order (the same on every SP rank)."""
        layout = self.sp_layout
        dp_rank = layout.dp_rank if layout is not None else self.args.process_index
        batches = []
        for epoch in range(self.ppo.ppo_epochs):
            generator = torch.Generator().manual_seed(
                (self.args.seed * 1_000_003 + dp_rank * 7_919 + step * 101 + epoch) % (2**63)
            )
            order = torch.randperm(len(rows), generator=generator).tolist()
            start = 0
            for size in sizes:
                chosen = [rows[i] for i in order[start : start + size]]
                start += size
                batches.append(self.collate(chosen, padded(EXPERIENCE)))
        return batches

    # -- the update --------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        experience = {key: inputs.pop(key) for key in EXPERIENCE}
        targets = inputs.pop("shift_labels")
        inputs.pop("document_lengths", None)
        mask = targets.ne(IGNORE_INDEX)
        with (
            token_loss_head(model, targets, head_options=self.loss_head, temperature=self.logit_temperature),
            values_alongside(model),
        ):
            out = model(**inputs, use_cache=False).logits
        logps, values = -out[..., 0], out[..., 1]
        policy = clipped_surrogate(logps, experience["old_logps"], experience["advantages"], CLIP_RANGE)
        value_losses, value_clipped = clipped_value_loss(
            values, experience["old_values"], experience["returns"], VALUE_CLIP_RANGE
        )
        weights = mask.to(logps.dtype)
        total = ((policy.losses + VALUE_COEF * value_losses) * weights).sum()
        if num_items_in_batch is None:
            num_items_in_batch = self._get_num_items_in_batch([{"shift_labels": targets}], logps.device)
        count = weights.sum()
        metrics = self.train_metrics
        metrics.add("policy_loss", (policy.losses * weights).sum().detach(), count)
        metrics.add("value_loss", (value_losses * weights).sum().detach(), count)
        metrics.add("clip_ratio", (policy.clipped.to(weights.dtype) * weights).sum(), count)
        metrics.add("value_clip_ratio", (value_clipped.to(weights.dtype) * weights).sum(), count)
        delta = (logps - experience["old_logps"]).detach()
        metrics.add("approx_kl", (0.5 * delta**2 * weights).sum(), count)  # to the rollout policy
        loss = normalized_token_loss(total, num_items_in_batch, self.gradient_average_world)
        return (loss, None) if return_outputs else loss

    # -- the controllers travel with checkpoints (the critic: ValueHeadSaving) -------------------

    def rank_state(self) -> dict:
        state = super().rank_state()
        state["ppo"] = {
            "kl_control": self.kl_control.state_dict(),
            "score_moments": self.score_moments.state_dict(),
        }
        return state

    def load_rank_state(self, state: dict) -> None:
        super().load_rank_state(state)
        if "ppo" in state:
            self.kl_control.load_state_dict(state["ppo"]["kl_control"])
            self.score_moments.load_state_dict(state["ppo"]["score_moments"])

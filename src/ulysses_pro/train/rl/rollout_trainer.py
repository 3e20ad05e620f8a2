"""What the RL trainers share: sampling rollouts, collating them into SP-split rows, tiled log-probs.

A subclass (GRPO, PPO) turns prompt batches into scored micro-batches in `get_batch_samples`; this
base gives it the sampler wiring (set by the stage once SP exists), the collation of prompt +
completion rows whose targets are the completion tokens, per-token log-probs from the tiled head,
and the sampled completions printed at each logging step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ...data.collators import PaddingCollator
from ...models.memory import token_loss_head
from ...parallel.reduce import IGNORE_INDEX
from ...parallel.sharding import SequenceParallelCollator
from ..metrics import SequenceMetrics
from ..trainer import UlyssesTrainer
from .rollout import Rollout, roll_out

logger = logging.getLogger(__name__)

SHOWN_SAMPLES = 2  # completions printed at each logging step


def completion_row(rollout: Rollout) -> dict[str, list[int]]:
    """Prompt + completion ids; the targets are the completion tokens only."""
    prompt = rollout.prompt.prompt_ids
    return {
        "input_ids": prompt + rollout.completion_ids,
        # Shifted once over the whole sequence (contract 2): position t predicts token t + 1.
        "shift_labels": [IGNORE_INDEX] * (len(prompt) - 1) + rollout.completion_ids + [IGNORE_INDEX],
    }


class RolloutTrainer(UlyssesTrainer):
    """UlyssesTrainer whose micro-batches are completions sampled from the policy being trained."""

    # The loader yields prompt rows (DP-sharded, the same on every SP rank); the trainer splits.
    loader_splits_sequences = False

    def __init__(self, *args: Any, reference=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference = reference.to(self.args.device) if reference is not None else None
        self.train_metrics = SequenceMetrics(self.args.device)
        self.metric_sources.append(self.train_metrics)
        # Set by the stage once SP is wired: what samples, and the template's stop tokens.
        self.sampler = None
        self.stop_ids: list[int] = []
        self._shown: list[tuple[Rollout, float]] = []

    def sample(self, prompts, num_generations: int, sample_step: int) -> list[Rollout]:
        """`num_generations` completions per prompt, the same on every rank of the SP group."""
        return roll_out(
            self.sampler,
            self.model,
            prompts,
            num_generations,
            sample_step,
            self.processing_class,
            self.stop_ids,
            self._sp_group,
        )

    def collate(self, rows: list[dict], extra: Callable | None = None) -> dict[str, torch.Tensor]:
        """Pad the rows (and `extra(rows, width)`'s per-token tensors), then keep this rank's shard."""
        pad = self.processing_class.pad_token_id
        padding = PaddingCollator(pad)

        def pad_all(rows):
            batch = padding(rows)
            if extra is not None:
                batch.update(extra(rows, batch["input_ids"].shape[1]))
            return batch

        collate = pad_all
        if self._sp_group is not None:
            collate = SequenceParallelCollator(pad_all, pad, self.sp_layout)
        return collate(rows)

    def token_logps(self, model, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """log p of each target token of this rank's shard (0 where there is none), from the tiled head."""
        with token_loss_head(model, targets, head_options=self.loss_head):
            return -model(**batch, use_cache=False).logits

    def record_completions(self, rollouts: list[Rollout], rewards: torch.Tensor) -> None:
        metrics = self.train_metrics
        metrics.record("reward", rewards)
        metrics.record(
            "completions/mean_length", torch.tensor([float(len(r.completion_ids)) for r in rollouts])
        )
        metrics.record("completions/clipped_ratio", torch.tensor([float(r.truncated) for r in rollouts]))
        self._shown = list(zip(rollouts[:SHOWN_SAMPLES], rewards[:SHOWN_SAMPLES].tolist()))

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

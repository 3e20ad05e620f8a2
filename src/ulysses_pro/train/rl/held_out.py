"""Held-out evaluation of the RL stages: roll out the eval prompts, score them, log the means.

`do_eval` with `eval_dataset` or `val_size` (the prompts are chosen as for sft,
`data/prompts.py`) makes `Trainer.evaluate` (every `eval_steps` under `eval_strategy: steps`, and
once after training) roll out one completion per held-out prompt with the run's engine, score it
as training scores its rollouts, and log `eval_reward`, `eval_rewards/<name>`, `eval_kl` (when there
is a reference), `eval_completions/mean_length` and `eval_completions/clipped_ratio`.

Decoding is greedy unless `eval_do_sample: true`, which samples with the run's decoding keys: an
evaluation measures the policy, not the luck of one draw (verl's `rollout.val_kwargs.do_sample`
defaults to false for the same reason). Every held-out batch is seeded by its index alone, so a
rerun, and every evaluation of one run, draws the same noise: two points of the eval curve differ
by the policy only.

Exactness: the rollouts go through `roll_out` (each SP group's rank 0 samples and broadcasts) and
the reward functions through `score_once_per_group`, as in training. DP ranks take prompts d,
d + dp, ... in batches of `per_device_eval_batch_size`; every rank runs the same batches of the same
size, the missing rows repeating a prompt that counts for nothing, because decoding with sharded
weights and every SP forward hold collectives. Each metric is sum / count over all ranks
(`SequenceMetrics`), so the means are those of the whole held-out set whatever the DP x SP split.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers.trainer_utils import EvalLoopOutput

from .engines import SamplingSettings
from .rollout import Rollout, roll_out

# Held-out batch i is sampled as rollout step EVAL_STEP_BASE + i: apart from any training step's
# seed, and the same at every evaluation.
EVAL_STEP_BASE = 1 << 40


def held_out_settings(settings: SamplingSettings, sample: bool) -> SamplingSettings:
    """The decoding of held-out rollouts: the run's keys, greedy unless `sample` (lengths, stops and
    the repetition penalty stay the run's)."""
    return settings if sample else replace(settings, do_sample=False)


def held_out_batches(length: int, batch_size: int, dp_size: int, dp_rank: int) -> list[tuple[list[int], int]]:
    """(prompt indices, how many of them count) per batch of this DP rank: prompts dp_rank,
    dp_rank + dp_size, ... in order; each batch as large as the largest DP share's, so every rank
    runs the same batches; padding rows repeat prompt 0 and are not counted."""
    share = list(range(dp_rank, length, dp_size))
    largest = -(-length // dp_size)
    batches = []
    for start in range(0, largest, batch_size):
        size = min(batch_size, largest - start)
        real = share[start : start + size]
        batches.append((real + [0] * (size - len(real)), len(real)))
    return batches


class HeldOutPrompts:
    """What `get_eval_dataloader` returns for prompts: this DP rank's batches as (rows, counted)."""

    def __init__(self, dataset, batch_size: int, dp_size: int, dp_rank: int) -> None:
        self.dataset = dataset
        self.batches = held_out_batches(len(dataset), batch_size, dp_size, dp_rank)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for indices, counted in self.batches:
            yield [self.dataset[i] for i in indices], counted


class HeldOutEvaluation:
    """RolloutTrainer's `evaluate`: held-out rollouts scored, instead of a loss on token rows.

    A stage defines `score_rollouts` (what its training logs as `reward`, and the parts it logs
    as `rewards/<name>`) and `record_held_out_kl`."""

    # Set by the stage with the sampler (`stages/sampling.py`): the run's engine at
    # `held_out_settings`.
    eval_sampler = None

    def score_rollouts(self, rollouts: list[Rollout], counted: int) -> tuple[torch.Tensor, dict[str, list]]:
        """(reward, its parts by name) of the first `counted` completions; every rank of the SP group
        calls it with every row (a reward model's forward is split over the group)."""
        raise NotImplementedError

    def record_held_out_kl(self, rollouts: list[Rollout], counted: int, metrics) -> None:
        """Add the first `counted` completions' KL to the reference to `metrics` (none by default)."""

    def get_eval_dataloader(self, eval_dataset=None) -> HeldOutPrompts:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        layout = self.sp_layout
        dp_size = layout.dp_size if layout else max(1, self.args.world_size)
        dp_rank = layout.dp_rank if layout else self.args.process_index
        return HeldOutPrompts(dataset, self.args.per_device_eval_batch_size, dp_size, dp_rank)

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        metrics = self.eval_metrics
        for index, (prompts, counted) in enumerate(dataloader):
            rollouts = roll_out(
                self.eval_sampler, self.model, prompts, 1, EVAL_STEP_BASE + index, self._sp_group
            )
            rewards, parts = self.score_rollouts(rollouts, counted)
            metrics.record("reward", rewards)
            for name, values in parts.items():
                metrics.record(
                    f"rewards/{name.rpartition(':')[2]}", torch.tensor(values, dtype=torch.float64)
                )
            kept = rollouts[:counted]
            lengths = [float(len(r.completion_ids)) for r in kept]
            metrics.record("completions/mean_length", torch.tensor(lengths, dtype=torch.float64))
            clipped = [float(r.truncated) for r in kept]
            metrics.record("completions/clipped_ratio", torch.tensor(clipped, dtype=torch.float64))
            self.record_held_out_kl(rollouts, counted, metrics)
        means = metrics.metrics()  # one all-reduce: sums and counts over every rank
        return EvalLoopOutput(
            predictions=None,
            label_ids=None,
            metrics={f"{metric_key_prefix}_{name}": value for name, value in means.items()},
            num_samples=len(dataloader.dataset),
        )

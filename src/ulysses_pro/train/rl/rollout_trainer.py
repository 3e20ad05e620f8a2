"""What the RL trainers share: rollouts in groups, reused for several passes, exact resume.

The Trainer iterates an `ExperienceLoader`: it takes `rollout_group` prompt micro-batches at a
time, has the subclass turn them into scored training micro-batches (`make_experience`: sample,
score, advantages, old log-probs), and yields `rollout_passes` x as many (PPO's `ppo_epochs`,
GRPO's `num_iterations`). Each optimizer step takes GA of them, so the normalising count of a
step is known before its first backward (accumulation stays exact).

The base also gives the subclasses: the sampler wiring (set by the stage once SP exists), the
collation of prompt + completion rows whose targets are the completion tokens, per-token
log-probs (and entropies) from the tiled head, reward-model scores read as the reward model was
trained, the sampled completions printed at each logging step, and the held-out evaluation
(`held_out.py`: `evaluate` rolls out the eval prompts and logs their rewards and KL). Every
log-prob and entropy is that of the logits divided by the sampling temperature
(`logit_temperature`, TRL's and verl's choice; docs/rl.md says why top_p / top_k are left out).

Resume: a checkpoint saved between rollout groups resumes exactly (the group index, hence the
sampling seed, follows from the optimizer step). One saved inside a group (PPO's passes) resumes
at that micro-batch with the group sampled again from the resumed policy, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from itertools import islice
from typing import Any

import torch

from ...data.collators import PaddingCollator
from ...models.memory import token_loss_head
from ...parallel.reduce import IGNORE_INDEX
from ...parallel.sharding import SequenceParallelCollator
from ..metrics import SequenceMetrics
from ..trainer import UlyssesTrainer
from .held_out import HeldOutEvaluation
from .rollout import Rollout, roll_out

logger = logging.getLogger(__name__)

SHOWN_SAMPLES = 2  # completions printed at each logging step


def completion_row(rollout: Rollout, trained: bool = True) -> dict[str, list[int]]:
    """Prompt + completion ids; the targets are the completion tokens only (none when not `trained`:
    the row keeps its place in the batch but adds nothing to the loss)."""
    prompt = rollout.prompt.prompt_ids
    targets = rollout.completion_ids if trained else [IGNORE_INDEX] * len(rollout.completion_ids)
    return {
        "input_ids": prompt + rollout.completion_ids,
        # Shifted once over the whole sequence (contract 2): position t predicts token t + 1.
        "shift_labels": [IGNORE_INDEX] * (len(prompt) - 1) + targets + [IGNORE_INDEX],
    }


def padded(
    keys: tuple[str, ...], dtype=torch.float32
) -> Callable[[list[dict], int], dict[str, torch.Tensor]]:
    """A `RolloutTrainer.collate` extra: the rows' per-token lists `keys`, right-padded with 0."""

    def extra(rows: list[dict], width: int) -> dict[str, torch.Tensor]:
        return {
            key: torch.tensor([row[key] + [0] * (width - len(row[key])) for row in rows], dtype=dtype)
            for key in keys
        }

    return extra


class ExperienceLoader:
    """Prompt batches in, `passes` x as many training micro-batches out, `group` at a time."""

    def __init__(self, prompts, make_experience: Callable[[list], list], group: int, passes: int):
        self.prompts, self.make_experience, self.group, self.passes = prompts, make_experience, group, passes
        self.dataset = prompts.dataset
        self._skip = 0

    def __len__(self) -> int:
        return len(self.prompts) * self.passes

    def skip_next(self, micro_batches: int) -> None:
        """The next iteration starts `micro_batches` in (a resumed epoch)."""
        self._skip = micro_batches

    def __iter__(self):
        source = iter(self.prompts)
        whole, partial = divmod(self._skip, self.group * self.passes)
        self._skip = 0
        for _ in range(whole):
            list(islice(source, self.group))
        while batches := list(islice(source, self.group)):
            produced = self.make_experience(batches)
            yield from produced[partial:]
            partial = 0

    def set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.prompts, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


class RolloutTrainer(HeldOutEvaluation, UlyssesTrainer):
    """UlyssesTrainer whose micro-batches are completions sampled from the policy being trained."""

    # The loader yields prompt rows (DP-sharded, the same on every SP rank); the trainer splits.
    loader_splits_sequences = False

    def __init__(self, *args: Any, reference=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference = reference.to(self.args.device) if reference is not None else None
        self.train_metrics = SequenceMetrics(self.args.device)
        self.metric_sources.append(self.train_metrics)
        # Set by the stage once SP is wired: what samples, the template's stop tokens, the reward
        # model (if any) and what follows a stop token in the template's training rows.
        self.sampler = None
        self.stop_ids: list[int] = []
        # Logits are divided by the sampling temperature for every log-prob and entropy (old,
        # reference and current policy), so they are those of the distribution that sampled.
        self.logit_temperature = 1.0
        self.reward_model = None
        self.score_suffix: list[int] = []
        self._shown: list[tuple[Rollout, float]] = []
        self._experience: ExperienceLoader | None = None
        # transformers' skip of already-trained batches would rebuild a plain DataLoader of prompts;
        # the ExperienceLoader skips itself instead (`_load_optimizer_and_scheduler`).
        self.args.ignore_data_skip = True

    # -- what a subclass defines -------------------------------------------------------------------

    rollout_passes = 1  # training passes over each rollout group
    # Per-token experience in the training batches (not model inputs): kept in fp32 on the way in.
    experience_keys: tuple[str, ...] = ()

    def rollout_group(self) -> int:
        """Prompt micro-batches rolled out together (their statistics are shared)."""
        return self.args.gradient_accumulation_steps

    def make_experience(self, prompt_batches: list) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def items_in(self, batches: list[dict[str, torch.Tensor]], device) -> torch.Tensor | None:
        """What an optimizer step's loss is normalised by (default: its target tokens, globally)."""
        return self._get_num_items_in_batch(batches, device)

    # -- the loop ----------------------------------------------------------------------------------

    @property
    def rollout_index(self) -> int:
        """Which rollout group the current optimizer step belongs to (seeds its sampling)."""
        updates = self.rollout_group() * self.rollout_passes // self.args.gradient_accumulation_steps
        return self.state.global_step // max(1, updates)

    def get_train_dataloader(self):
        prompts = super().get_train_dataloader()
        self._experience = ExperienceLoader(
            prompts, self.make_experience, self.rollout_group(), self.rollout_passes
        )
        return self._experience

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # transformers casts every floating tensor of a batch to DeepSpeed's dtype (meant for float
        # model inputs): bf16-rounded old log-probs would put the first pass's ratio up to ~3% off 1
        # and let the clip fire for nothing. The experience moves to the device as it is.
        inputs = dict(inputs)
        experience = {key: inputs.pop(key) for key in self.experience_keys if key in inputs}
        prepared = super()._prepare_inputs(inputs)
        return {**prepared, **{key: value.to(self.args.device) for key, value in experience.items()}}

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        batches = list(islice(epoch_iterator, num_batches))
        return batches, self.items_in(batches, device)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        state_file = os.path.join(checkpoint, "trainer_state.json") if checkpoint else None
        if self._experience is None or not state_file or not os.path.isfile(state_file):
            return
        # What transformers would skip (it is told not to): the micro-batches of this epoch so far.
        global_step = json.loads(open(state_file).read())["global_step"]
        ga = self.args.gradient_accumulation_steps
        per_epoch = max(len(self._experience) // ga + int(len(self._experience) % ga > 0), 1)
        done = global_step % per_epoch * ga
        if done:
            # transformers itself (data skip off) restores the RNG and this rank's state, and runs the
            # epoch's update loop from 0: the updates skipped here come back as empty steps at its end.
            self._experience.skip_next(done)
            if done % (self.rollout_group() * self.rollout_passes):
                logger.warning(
                    "resumed inside a rollout group: its rollouts are sampled again from the resumed policy"
                )

    # -- pieces --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def evaluating(self):
        """The policy in eval mode for a no-grad pass (old log-probs, values), then as it was."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def sample(self, prompts, num_generations: int, sample_step: int) -> list[Rollout]:
        """`num_generations` completions per prompt, the same on every rank of the SP group."""
        return roll_out(self.sampler, self.model, prompts, num_generations, sample_step, self._sp_group)

    def collate(self, rows: list[dict], extra: Callable | None = None) -> dict[str, torch.Tensor]:
        """Pad the rows (and `extra(rows, width)`'s per-token tensors), keep this rank's shard, and
        put it on the model's device: the no-grad forwards of the experience (old log-probs, values,
        reference and reward-model scores) run on it outside the Trainer's input preparation."""
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
        device = self.args.device
        return {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in collate(rows).items()
        }

    def token_logps(
        self, model, batch: dict[str, torch.Tensor], targets: torch.Tensor, entropies: list | None = None
    ) -> torch.Tensor:
        """log p of each target token of this rank's shard (0 where there is none), at the sampling
        temperature, from the tiled head."""
        with token_loss_head(
            model,
            targets,
            head_options=self.loss_head,
            entropies=entropies,
            temperature=self.logit_temperature,
        ):
            return -model(**batch, use_cache=False).logits

    @torch.no_grad()
    def held_out_logps(self, rollouts: list[Rollout], counted: int) -> tuple[torch.Tensor, ...]:
        """(policy log-probs, reference log-probs, target mask) of this rank's shard of the
        completions, at the logit temperature training's KL is taken at; rows past `counted` (held-out
        padding) have no target."""
        batch = self.collate([completion_row(rollout) for rollout in rollouts])
        targets = batch.pop("shift_labels")
        batch.pop("document_lengths", None)
        targets[counted:] = IGNORE_INDEX
        with self.evaluating():
            logps = self.token_logps(self.model, batch, targets).float()
            with self.reference.scoring(self.model) as reference:
                reference_logps = self.token_logps(reference, batch, targets).float()
        return logps, reference_logps, targets.ne(IGNORE_INDEX)

    @torch.no_grad()
    def reward_model_scores(self, rollouts: list[Rollout]) -> torch.Tensor:
        """The reward model's score of each completion, read as its training rows end: followed by
        the template's tokens after the stop token when it stopped (`score_suffix`)."""
        rows = []
        for rollout in rollouts:
            ids = rollout.prompt.prompt_ids + rollout.completion_ids
            if not rollout.truncated:
                ids = ids + self.score_suffix
            rows.append(
                {
                    "input_ids": ids,
                    "shift_labels": [IGNORE_INDEX] * len(ids),
                    "last_token": [0] * (len(ids) - 1) + [1],
                }
            )
        batch = self.collate(rows, padded(("last_token",), torch.long))
        last_token = batch.pop("last_token")
        batch.pop("shift_labels")
        return self.reward_model.score(self.model, batch, last_token, self.sequence_sum).float()

    def record_completions(self, rollouts: list[Rollout], rewards: torch.Tensor) -> None:
        metrics = self.train_metrics
        metrics.record("reward", rewards)
        metrics.record(
            "completions/mean_length", torch.tensor([float(len(r.completion_ids)) for r in rollouts])
        )
        metrics.record("completions/clipped_ratio", torch.tensor([float(r.truncated) for r in rollouts]))
        self._shown = list(zip(rollouts[:SHOWN_SAMPLES], rewards[:SHOWN_SAMPLES].tolist()))

    def record_entropy(self, entropies: list[torch.Tensor], mask: torch.Tensor) -> None:
        """Token-weighted over every rank: each SP rank adds its own shard's tokens."""
        if entropies:
            weights = mask.to(entropies[0].dtype)
            self.train_metrics.add("entropy", (entropies[0] * weights).sum(), weights.sum())

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

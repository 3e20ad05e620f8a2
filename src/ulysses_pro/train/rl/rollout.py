"""Rollouts: completions sampled from the policy with plain attention, one set per SP group.

`PolicySampler` asks its engine (`engines/`: batched `generate` by default) for the step's
completions, each prompt's with its own token budget. Every rank of an SP group must then train on
the very same sequences, so the group's rank 0 samples and broadcasts its completions to the others
(on GPUs, identical seeds alone do not give identical samples); the others wait, unless the weights
are sharded and every forward needs every rank. The sampling seed depends on the run's seed,
the DP rank and the step, so a resumed run samples what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.distributed as dist

from ...data.prompts import PromptRow
from ...parallel.comm import broadcast_from_group_leader
from .engines import RolloutEngine, RolloutRequest, SamplingSettings, sampling_seed
from .stop_strings import cut_at_stop_string


@dataclass
class Rollout:
    """One completion of one prompt."""

    prompt: PromptRow
    completion_ids: list[int]
    completion: str  # decoded without special tokens, before any stop string: what rewards read
    truncated: bool  # ended by the length limit rather than a stop token or string
    budget: int | None = None  # the most new tokens it could have had (DAPO's overlong shaping)


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The completion up to and including its first stop token; (ids, True) when there is none."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return list(ids[: position + 1]), False
    return list(ids), True


class PolicySampler:
    """Samples a step's completions with the run's engine and sampling settings."""

    def __init__(
        self,
        tokenizer,
        stop_ids: list[int],
        settings: SamplingSettings,
        cutoff_len: int,
        seed: int,
        dp_rank: int,
        engine: RolloutEngine,
    ):
        self.tokenizer, self.stop_ids, self.settings = tokenizer, stop_ids, settings
        self.cutoff_len, self.seed, self.dp_rank, self.engine = cutoff_len, seed, dp_rank, engine

    @property
    def every_rank_decodes(self) -> bool:
        """Whether every rank must run the engine (sharded weights), not only each SP group's rank 0."""
        return bool(getattr(self.engine, "synced_gpus", False))

    def budget(self, prompt: PromptRow) -> int:
        """The most new tokens a completion of `prompt` may have."""
        return self.settings.budget(len(prompt.prompt_ids), self.cutoff_len)

    def __call__(
        self, model, prompts: Sequence[PromptRow], num_generations: int, step: int
    ) -> list[list[list[int]]]:
        request = RolloutRequest(
            [prompt.prompt_ids for prompt in prompts],
            num_generations,
            [self.budget(prompt) for prompt in prompts],
            sampling_seed(self.seed, self.dp_rank, step),
        )
        return self.engine.generate(model, request)

    def cut(self, ids: Sequence[int]) -> tuple[list[int], str, bool]:
        """(kept ids, the text rewards read, truncated) of one sampled completion: cut after its
        first stop token or the token completing its first stop string, whichever comes first."""
        kept, truncated = cut_at_stop(ids, self.stop_ids)
        text = None
        by_string = cut_at_stop_string(kept, self.tokenizer, self.settings.stop, self.settings.min_new_tokens)
        if by_string is not None and (truncated or len(by_string[0]) < len(kept)):
            (kept, text), truncated = by_string, False
        if not kept:  # a zero-token completion: nothing to train on, but the row keeps its place
            truncated = True
        if text is None:
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return kept, text, truncated


def roll_out(
    sampler: PolicySampler,
    model,
    prompts: Sequence[PromptRow],
    num_generations: int,
    step: int,
    sp_group=None,
) -> list[Rollout]:
    """`num_generations` completions per prompt, consecutive per prompt, identical on every rank of
    the SP group (its rank 0's samples)."""
    # Only the leader's samples are used; the others decode too only where every forward needs every
    # rank (sharded weights: generate's synced_gpus).
    leader = sp_group is None or dist.get_rank(sp_group) == 0
    sampled = sampler(model, prompts, num_generations, step) if leader or sampler.every_rank_decodes else None
    (sampled,) = broadcast_from_group_leader([sampled], sp_group)
    if len(sampled) != len(prompts) or any(len(group) != num_generations for group in sampled):
        raise RuntimeError(
            f"the sampler returned {[len(g) for g in sampled]} completions for "
            f"{len(prompts)} prompts x {num_generations}"
        )
    rollouts = []
    for prompt, completions in zip(prompts, sampled):
        budget = sampler.budget(prompt)
        for ids in completions:
            kept, text, truncated = sampler.cut(ids)
            rollouts.append(Rollout(prompt, kept, text, truncated, budget))
    return rollouts

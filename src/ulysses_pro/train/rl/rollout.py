"""Rollouts: completions sampled from the policy with plain attention, one set per SP group.

Generation runs without sequence parallelism: each rank decodes its DP group's prompts with the
model's ordinary attention (KV cache on). Every rank of an SP group must then train on the very same
sequences, so the group's rank 0 broadcasts its completions to the others: on GPUs, identical seeds
alone do not give identical samples. The sampling seed depends on the run's seed, the DP rank and
the step, so a resumed run samples what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...data.prompts import PromptRow
from ...models.attention import unsharded_attention
from ...models.wrappers import unwrap_model
from ...parallel.comm import broadcast_from_group_leader

# (model, prompts, num_generations, step) -> per prompt, `num_generations` completions' token ids
Sampler = Callable[[torch.nn.Module, Sequence[PromptRow], int, int], list[list[list[int]]]]


@dataclass
class Rollout:
    """One completion of one prompt."""

    prompt: PromptRow
    completion_ids: list[int]
    completion: str  # decoded without special tokens: what reward functions read
    truncated: bool  # ended by the length limit rather than a stop token


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """The completion up to and including its first stop token; (ids, True) when there is none."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return list(ids[: position + 1]), False
    return list(ids), True


class PolicySampler:
    """Samples completions with `model.generate` and the run's generating arguments."""

    def __init__(
        self,
        tokenizer,
        stop_ids: list[int],
        generate_kwargs: dict,
        cutoff_len: int,
        seed: int,
        dp_rank: int,
        plain_attention: str | None,
        synced_gpus: bool = False,
    ):
        self.tokenizer, self.stop_ids, self.cutoff_len = tokenizer, stop_ids, cutoff_len
        self.generate_kwargs = {k: v for k, v in generate_kwargs.items() if k != "max_length"}
        self.seed, self.dp_rank, self.plain_attention = seed, dp_rank, plain_attention
        self.synced_gpus = synced_gpus

    def _seed_for(self, step: int) -> int:
        return (self.seed * 1_000_003 + self.dp_rank * 7_919 + step) % (2**63)

    @torch.no_grad()
    def __call__(
        self, model, prompts: Sequence[PromptRow], num_generations: int, step: int
    ) -> list[list[list[int]]]:
        hf_model = unwrap_model(model)
        device = next(hf_model.parameters()).device
        devices = [device] if device.type == "cuda" else []
        was_training = hf_model.training
        hf_model.eval()
        out: list[list[list[int]]] = []
        try:
            with torch.random.fork_rng(devices=devices), unsharded_attention(hf_model, self.plain_attention):
                torch.manual_seed(self._seed_for(step))
                for prompt in prompts:
                    ids = torch.tensor([prompt.prompt_ids], device=device)
                    room = self.cutoff_len - ids.shape[1]
                    budget = min(self.generate_kwargs.get("max_new_tokens", room), room)
                    generated = hf_model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        **{**self.generate_kwargs, "max_new_tokens": budget},
                        num_return_sequences=num_generations,
                        use_cache=True,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=self.stop_ids,
                        synced_gpus=self.synced_gpus,
                    )
                    out.append([row[ids.shape[1] :].tolist() for row in generated])
        finally:
            hf_model.train(was_training)
        return out


def roll_out(
    sampler: Sampler,
    model,
    prompts: Sequence[PromptRow],
    num_generations: int,
    step: int,
    tokenizer,
    stop_ids: Sequence[int],
    sp_group=None,
) -> list[Rollout]:
    """`num_generations` completions per prompt, consecutive per prompt, identical on every rank of
    the SP group (its rank 0's samples)."""
    sampled = sampler(model, prompts, num_generations, step)
    if len(sampled) != len(prompts) or any(len(group) != num_generations for group in sampled):
        raise RuntimeError(
            f"the sampler returned {[len(g) for g in sampled]} completions for "
            f"{len(prompts)} prompts x {num_generations}"
        )
    (sampled,) = broadcast_from_group_leader([sampled], sp_group)
    rollouts = []
    for prompt, completions in zip(prompts, sampled):
        for ids in completions:
            kept, truncated = cut_at_stop(ids, stop_ids)
            if not kept:  # a zero-token budget: nothing to train on, but the row keeps its place
                truncated = True
            text = tokenizer.decode(kept, skip_special_tokens=True)
            rollouts.append(Rollout(prompt, kept, text, truncated))
    return rollouts

"""What a rollout engine is asked for: the sampling settings of the run and one step's request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSettings:
    """The decoding keys of a run's rollouts (LLaMA-Factory's generating keys, plus `min_new_tokens`
    and `stop`). `max_new_tokens` None: as long as `cutoff_len` leaves room."""

    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_generating(cls, generating) -> SamplingSettings:
        """From the run's `GeneratingArguments`."""
        return cls(
            do_sample=generating.do_sample,
            temperature=generating.temperature,
            top_p=generating.top_p,
            top_k=generating.top_k,
            repetition_penalty=generating.repetition_penalty,
            max_new_tokens=generating.max_new_tokens if generating.max_new_tokens > 0 else None,
            min_new_tokens=generating.min_new_tokens,
            stop=tuple(generating.stop or ()),
        )

    @property
    def logit_temperature(self) -> float:
        """What the trainer divides logits by for log-probs: the temperature the tokens were sampled
        at (TRL's and verl's choice); greedy decoding samples from no temperature, so 1."""
        return self.temperature if self.do_sample else 1.0

    def budget(self, prompt_length: int, cutoff_len: int) -> int:
        """New tokens a completion of this prompt may have: `max_new_tokens`, capped so that prompt +
        completion fit in `cutoff_len` (each completion its own budget)."""
        room = cutoff_len - prompt_length
        return room if self.max_new_tokens is None else min(self.max_new_tokens, room)


@dataclass(frozen=True)
class RolloutRequest:
    """One call's work: `num_generations` completions of each prompt, each at most its prompt's
    budget of new tokens, sampled from the generator seeded with `seed`."""

    prompts: list[list[int]]
    num_generations: int
    budgets: list[int]
    seed: int

    def __post_init__(self) -> None:
        if len(self.budgets) != len(self.prompts):
            raise ValueError(f"{len(self.budgets)} budgets for {len(self.prompts)} prompts")
        if any(budget < 1 for budget in self.budgets):
            raise ValueError(f"every prompt needs room for a completion; budgets {self.budgets}")


def sampling_seed(run_seed: int, dp_rank: int, step: int) -> int:
    """The generator seed of one rollout call: a function of the run's seed, the DP rank and the
    rollout step only, so a resumed run samples what the uninterrupted one would have."""
    return (run_seed * 1_000_003 + dp_rank * 7_919 + step) % (2**63)

"""Rollout engines: what turns one step's prompts into sampled completions.

An engine takes the policy and a `RolloutRequest` (prompt ids, completions per prompt, each
prompt's token budget, the generator seed) and returns, per prompt, its completions' token ids.
Cutting at stop tokens and strings, the SP-group broadcast and decoding for rewards are the
caller's (`rollout.roll_out`), so every engine is held to the same completions.

- `batched` (default): left-padded micro-batches of `rollout_batch_size` sequences through
  transformers' `generate` (`batched.py`).
- `sequential`: one `generate` per prompt (`sequential.py`), the reference the batched engine is
  tested and benchmarked against.
- `sequence_parallel`: the prompt prefilled under SP and the completions decoded with the KV cache
  split over the SP group (`sequence_parallel.py`): long rollouts bounded by the group's memory.
- vLLM (TRL's `use_vllm` / `vllm_mode`): not built yet. The config refuses it by name before data
  and weights load (`config/validation.py`): vLLM is not installed here, and an engine that could
  not be run would be untested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .batched import DEFAULT_BATCH_SIZE, BatchedGenerateEngine
from .sequential import SequentialGenerateEngine
from .settings import RolloutRequest, SamplingSettings, sampling_seed


class RolloutEngine(Protocol):
    """Samples completions of a request's prompts from the policy."""

    name: str

    def generate(self, model, request: RolloutRequest) -> list[list[list[int]]]:
        """Per prompt, `request.num_generations` completions' token ids, each at most its budget."""
        ...


def make_engine(
    name: str,
    tokenizer,
    settings: SamplingSettings,
    stop_ids: Sequence[int],
    plain_attention: str | None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    synced_gpus: bool = False,
    layout=None,
) -> RolloutEngine:
    """The engine the config's `rollout_engine` names (`sequence_parallel` decodes over `layout`)."""
    if name == "batched":
        return BatchedGenerateEngine(tokenizer, settings, stop_ids, plain_attention, batch_size, synced_gpus)
    if name == "sequence_parallel":
        from .sequence_parallel import SequenceParallelDecodeEngine

        if layout is None or layout.sp_size < 2:
            raise ValueError("rollout_engine: sequence_parallel needs an SP group of 2 or more ranks")
        return SequenceParallelDecodeEngine(tokenizer, settings, stop_ids, layout)
    if name == "sequential":
        return SequentialGenerateEngine(tokenizer, settings, stop_ids, plain_attention, synced_gpus)
    raise ValueError(f"rollout_engine: {name!r} is not one of batched, sequential, sequence_parallel")


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BatchedGenerateEngine",
    "RolloutEngine",
    "RolloutRequest",
    "SamplingSettings",
    "SequentialGenerateEngine",
    "make_engine",
    "sampling_seed",
]

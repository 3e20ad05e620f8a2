"""Whether a run's rollouts fit: the KV cache one rank holds while decoding, against the device's
free memory, checked when the sampler is built (the model on its device), so a `max_new_tokens`
that cannot fit stops with one line naming it rather than running out of memory mid-step.

The cache per rank (bytes per token: 2 x layers x KV heads x head size x the weights' bytes):
- batched / sequential: transformers' cache keeps each row's prompt and completion, for the rows
  of one call (`rollout_batch_size`, or one prompt's `num_generations`), on the rank that decodes;
- sequence_parallel: one prompt's tokens once plus its completions, over the SP group.
Measured against the engine's own count in `bench/long_rollout_memory.py`.
"""

from __future__ import annotations

import math

from ...config import ConfigError

# Room left for the decoding step's activations and the allocator's slack.
FREE_FRACTION = 0.8


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def rollout_cache_bytes(
    per_token: int, engine: str, rows: int, generations: int, prompt: int, new: int, sp_size: int
) -> int:
    """The largest KV cache one rank holds while one call decodes (see the module docstring)."""
    if engine == "sequence_parallel":
        return per_token * (math.ceil(prompt / sp_size) + generations * math.ceil(new / sp_size))
    calls_rows = rows if engine == "batched" else generations
    return per_token * calls_rows * (prompt + new)


def check_rollouts_fit(
    per_token: int, engine: str, rows: int, generations: int, cutoff_len: int, new: int, sp_size: int, free: int
) -> None:
    """Refuse a run whose longest rollout call (prompts up to `cutoff_len - new` tokens) cannot fit."""
    prompt = max(cutoff_len - new, 1)
    need = rollout_cache_bytes(per_token, engine, rows, generations, prompt, new, sp_size)
    if need <= FREE_FRACTION * free:
        return
    hint = (
        "lower max_new_tokens, cutoff_len or rollout_batch_size"
        if engine == "sequence_parallel"
        else "lower max_new_tokens, cutoff_len or rollout_batch_size, or decode over the SP group "
        "(rollout_engine: sequence_parallel, which holds 1/sequence_parallel_size of one prompt's cache)"
    )
    raise ConfigError(
        f"max_new_tokens: {new}: the rollouts' KV cache would need {need / 2**30:.1f} GiB on one rank "
        f"(rollout_engine: {engine}, {rows if engine == 'batched' else generations} rows of up to "
        f"{prompt + new} tokens) and {free / 2**30:.1f} GiB are free; {hint}"
    )

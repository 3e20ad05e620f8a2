"""Checks of the RL stages' rollout keys: the engine, the decoding keys and DAPO's overlong keys.

Run with the other cross-field checks, before any model or dataset is touched: a config asking for
vLLM where it is not installed (or, here, at all: that engine is not built yet) stops with one line
naming `use_vllm`, not after the weights loaded.
"""

from __future__ import annotations

import importlib.util

from .args import ROLLOUT_ENGINES, VLLM_MODES, FinetuningArguments, GeneratingArguments

ROLLOUT_STAGES = ("grpo", "ppo")
# GRPO-only keys and their defaults: set anywhere else, they would silently do nothing.
GRPO_ONLY = {"mask_truncated_completions": False, "overlong_buffer_len": 0, "overlong_penalty_factor": 1.0}


def validate_rollouts(finetuning: FinetuningArguments, generating: GeneratingArguments | None, fail) -> None:
    """Raise (through `fail(key, message)`) on a rollout setting the run cannot honour."""
    stage = finetuning.stage
    if finetuning.vllm_mode not in VLLM_MODES:
        fail("vllm_mode", f"{finetuning.vllm_mode!r} is not one of {', '.join(VLLM_MODES)}")
    if finetuning.use_vllm:
        if stage not in ROLLOUT_STAGES:
            fail("use_vllm", f"samples the RL stages' rollouts (grpo, ppo), not stage {stage}; remove it")
        if importlib.util.find_spec("vllm") is None:
            fail(
                "use_vllm",
                "needs vLLM, which is not installed; remove use_vllm (rollouts then use the batched "
                "generate engine, rollout_engine: batched)",
            )
        fail(
            "use_vllm",
            "the vLLM rollout engine is not available yet in this version of Ulysses Pro; remove use_vllm "
            "(rollouts use the batched generate engine, rollout_engine: batched)",
        )
    if finetuning.rollout_engine not in ROLLOUT_ENGINES:
        fail("rollout_engine", f"{finetuning.rollout_engine!r} is not one of {', '.join(ROLLOUT_ENGINES)}")
    if finetuning.rollout_batch_size < 1:
        fail("rollout_batch_size", f"must be >= 1, got {finetuning.rollout_batch_size}")
    for key, default in GRPO_ONLY.items():
        if stage != "grpo" and getattr(finetuning, key) != default:
            fail(key, f"applies to stage grpo (DAPO's overlong handling), not stage {stage}; remove it")
    if finetuning.eval_do_sample and stage not in ROLLOUT_STAGES:
        fail(
            "eval_do_sample",
            f"samples the RL stages' held-out rollouts (grpo, ppo), not stage {stage}; remove it",
        )
    if finetuning.overlong_buffer_len < 0:
        fail("overlong_buffer_len", f"must be >= 0, got {finetuning.overlong_buffer_len}")
    if finetuning.overlong_penalty_factor < 0:
        fail("overlong_penalty_factor", f"must be >= 0, got {finetuning.overlong_penalty_factor}")
    if stage in ROLLOUT_STAGES and generating is not None:
        _validate_decoding(finetuning, generating, fail)


def validate_sharded_decoding(finetuning: FinetuningArguments, parallel, training: dict, fail) -> None:
    """`rollout_engine: sequence_parallel` decodes over the SP group, each group on its own: it needs
    a group, and weights every rank holds whole (sharded weights would need every rank of the world
    in every decoding step, which groups of different lengths cannot give)."""
    if finetuning.rollout_engine != "sequence_parallel":
        return
    if parallel.sequence_parallel_size < 2:
        fail(
            "rollout_engine",
            "sequence_parallel decodes with the KV cache split over the SP group; set "
            "sequence_parallel_size >= 2, or use rollout_engine: batched",
        )
    sharded = training.get("fsdp") or training.get("deepspeed")
    if sharded:
        fail(
            "rollout_engine",
            f"sequence_parallel with sharded weights ({'fsdp' if training.get('fsdp') else 'deepspeed'}) "
            "is not built yet; use rollout_engine: batched",
        )


def _validate_decoding(finetuning: FinetuningArguments, generating: GeneratingArguments, fail) -> None:
    if generating.num_beams != 1:
        fail(
            "num_beams",
            f"rollouts are sampled from the policy, not beam-searched; use 1, got {generating.num_beams}",
        )
    if finetuning.eval_do_sample and not generating.do_sample:
        fail(
            "eval_do_sample",
            "samples held-out rollouts with the run's decoding keys, but do_sample is false (greedy "
            "rollouts); remove eval_do_sample (evaluation is greedy by default)",
        )
    if generating.do_sample and not generating.temperature > 0:
        fail("temperature", f"must be positive when do_sample is true, got {generating.temperature}")
    if generating.min_new_tokens < 0:
        fail("min_new_tokens", f"must be >= 0, got {generating.min_new_tokens}")
    limit = generating.max_new_tokens
    if limit > 0 and generating.min_new_tokens > limit:
        fail("min_new_tokens", f"{generating.min_new_tokens} is above max_new_tokens ({limit})")
    if generating.stop is not None:
        if isinstance(generating.stop, str):
            generating.stop = [generating.stop]
        if not all(isinstance(s, str) and s for s in generating.stop):
            fail("stop", f"{generating.stop!r}: expected a list of non-empty strings")
    if limit > 0 and finetuning.overlong_buffer_len > limit:
        fail(
            "overlong_buffer_len",
            f"{finetuning.overlong_buffer_len} is above max_new_tokens ({limit}); the penalty ramps over the "
            "last overlong_buffer_len tokens before the limit",
        )

"""The long-rollout engine (`rollout_engine: sequence_parallel`): the prompt prefilled under SP and
the completions decoded with the KV cache split over the group give, greedily, the completions the
batched engine gives on one rank with the whole cache, token for token; each rank holds about
1/P of the cache."""

from __future__ import annotations

import pytest
import torch

from ...launcher import run_ranks

PROMPT_LENGTHS = (1, 6, 23)  # one token (nothing to prefill), and lengths off the split unit
GENERATIONS, BUDGET = 3, 14


def _decode_on_rank(rank, world_size, mode):
    from ulysses_pro.models.attention import apply_sequence_parallel
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.models.tokenizer import load_builtin_tokenizer
    from ulysses_pro.parallel import init_sequence_parallel
    from ulysses_pro.train.rl.engines import RolloutRequest, SamplingSettings, make_engine

    tokenizer = load_builtin_tokenizer()
    model = build_tiny_model("llama", tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, seed=5)
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(5, 500, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    settings = SamplingSettings(do_sample=False, max_new_tokens=BUDGET)
    stop_ids = [tokenizer.eos_token_id]
    request = RolloutRequest(prompts, GENERATIONS, [BUDGET] * len(prompts), seed=11)
    whole = make_engine("batched", tokenizer, settings, stop_ids, None).generate(model, request)
    layout = init_sequence_parallel(world_size, mode, num_heads=4, num_kv_heads=2)
    apply_sequence_parallel(model, layout)
    engine = make_engine("sequence_parallel", tokenizer, settings, stop_ids, None, layout=layout)
    split = engine.generate(model, request)
    return whole, split, engine.last_cache_bytes


@pytest.mark.parametrize(("world", "mode"), [(2, "ulysses"), pytest.param(4, "hybrid", marks=pytest.mark.slow)])
def test_greedy_completions_decoded_from_a_split_cache_equal_the_whole_cache_ones(world, mode):
    results = run_ranks(_decode_on_rank, world, mode)
    whole, split, _ = results[0]
    assert all(len(group) == GENERATIONS for group in split)
    assert split == whole
    assert all(r[1] == split for r in results)  # every rank returns the group's tokens
    assert any(len(c) == BUDGET for group in split for c in group)  # decoded to the budget
    # the largest cache (the 23-token prompt) split: each rank holds its shard of the prompt and
    # every P-th decoded token
    layers, kv_heads, head_dim, bytes_ = 2, 2, 16, 4
    per_token = 2 * layers * kv_heads * head_dim * bytes_
    whole_cache = per_token * (PROMPT_LENGTHS[-1] - 1 + GENERATIONS * BUDGET)
    for *_, cache_bytes in results:
        assert cache_bytes < whole_cache * 0.75


def _train(rank, world_size, keys):
    from ..harness import run_training

    result = run_training(**keys)
    return result if rank == 0 else None


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    from .reward_models import write_reward_models

    return write_reward_models(tmp_path_factory.mktemp("sp_engine_reward_models"))


def test_ppo_with_rollouts_decoded_over_the_sp_group_matches_one_process_with_the_batched_engine(
    tmp_path, reward_models
):
    """The engine wired into a PPO run at SP=2 (zigzag ring): greedy rollouts decoded from the split
    cache train as the one-process run with the batched engine does (losses 1e-5, gradients 1e-4).
    (PPO, as greedy completions of a GRPO group are all alike and leave no advantage.)"""
    from ..harness import parallel_keys, relative_error
    from .test_ppo_parallel import ppo_keys

    keys = {"do_sample": False, "max_new_tokens": 12}
    reference = run_ranks(
        _train, 1, ppo_keys(tmp_path, "ref", reward_models, "full", per_device_train_batch_size=2, **keys)
    )[0]
    candidate = run_ranks(
        _train,
        2,
        ppo_keys(
            tmp_path,
            "sp",
            reward_models,
            "full",
            per_device_train_batch_size=2,
            rollout_engine="sequence_parallel",
            **parallel_keys(2, "zigzag-ring"),
            **keys,
        ),
    )[0]
    rewards = [e["reward"] for e in reference["logged"] if "reward" in e]
    assert rewards and [e["reward"] for e in candidate["logged"] if "reward" in e] == pytest.approx(rewards, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(reference["losses"], candidate["losses"])) <= 1e-5
    assert max(relative_error(a, b) for a, b in zip(reference["grads"], candidate["grads"])) <= 1e-4


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "set sequence_parallel_size >= 2"),
        ({"sequence_parallel_size": 2, "deepspeed": {"zero_optimization": {"stage": 3}}}, "sharded weights"),
    ],
)
def test_the_engine_is_refused_by_name_without_an_sp_group_or_with_sharded_weights(keys, message):
    from ulysses_pro.config import ConfigError, load_config

    base = {"stage": "grpo", "model_name_or_path": "tiny:llama", "reward_funcs": ["x:y"], "output_dir": "/tmp/unused"}
    with pytest.raises(ConfigError, match=f"rollout_engine: sequence_parallel.*{message}"):
        load_config({**base, "rollout_engine": "sequence_parallel", **keys})


def test_a_rollout_cache_that_cannot_fit_is_refused_naming_max_new_tokens_and_the_sharded_engine():
    """The fit check's numbers (a Llama-3-8B shape, bf16: 128 KiB per token) and its message."""
    from transformers import LlamaConfig

    from ulysses_pro.config import ConfigError
    from ulysses_pro.train.rl.rollout_memory import (
        check_rollouts_fit,
        kv_bytes_per_token,
        rollout_cache_bytes,
    )

    config = LlamaConfig(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096)
    per_token = kv_bytes_per_token(config, 2)
    assert per_token == 128 * 1024
    # 64 rows of 4K + 60K tokens on one rank, against one prompt over 4 ranks
    assert rollout_cache_bytes(per_token, "batched", 64, 8, 4096, 61440, 1) == 64 * 65536 * per_token
    assert rollout_cache_bytes(per_token, "sequence_parallel", 64, 8, 4096, 61440, 4) == (1024 + 8 * 15360) * per_token
    free = 70 * 2**30
    check_rollouts_fit(per_token, "sequence_parallel", 64, 8, 65536, 61440, 4, free)  # 15.5 GiB: fits
    with pytest.raises(ConfigError, match=r"max_new_tokens: 61440: .* 512\.0 GiB on one rank .*rollout_engine: sequence_parallel"):
        check_rollouts_fit(per_token, "batched", 64, 8, 65536, 61440, 4, free)

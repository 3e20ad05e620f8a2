"""The grpo stage's pieces: config checks, prompt rows, reward functions, rollouts, the shipped example."""

from __future__ import annotations

import importlib.util
import json

import pytest

from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.data.prompts import PromptRow
from ulysses_pro.train.rl.engines import SamplingSettings
from ulysses_pro.train.rl.rewards import load_reward_functions, score
from ulysses_pro.train.rl.rollout import Rollout, cut_at_stop

from ...cli_runner import REPO, run_cli

COUNTING = str(REPO / "examples" / "rewards" / "counting.py")


def _grpo(**keys):
    base = {"stage": "grpo", "model_name_or_path": "tiny:llama", "dataset": "demo_tasks", "do_train": True}
    return load_config({**base, **keys})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "reward_funcs: stage grpo needs at least one reward function"),
        ({"reward_funcs": "m:f", "num_generations": 1}, "num_generations: must be >= 2"),
        ({"reward_funcs": "m:f", "loss_normalization": "batch"}, "'batch' is not one of token, sequence"),
        ({"reward_funcs": "m:f,n:g", "reward_weights": "1"}, "1 weights for 2 reward_funcs"),
        ({"reward_funcs": "m:f", "neat_packing": True}, "stage grpo samples completions per prompt"),
        ({"reward_funcs": "m:f", "epsilon": 1.5}, "epsilon: must be in (0, 1)"),
        ({"reward_funcs": "m:f", "neftune_noise_alpha": 5}, "NEFTune is not applied to sampled completions"),
        ({"reward_funcs": "m:f", "num_iterations": 0}, "num_iterations: must be >= 1"),
        (
            {"reward_funcs": "m:f", "reward_model": "rm", "reward_weights": "1"},
            "1 weights for 1 reward_funcs and a reward_model",
        ),
        ({"reward_model": "rm", "finetuning_type": "full"}, "a full policy needs reward_model_type: full"),
        # rollouts
        ({"reward_funcs": "m:f", "rollout_engine": "vllm"}, "rollout_engine: 'vllm' is not one of batched"),
        ({"reward_funcs": "m:f", "rollout_batch_size": 0}, "rollout_batch_size: must be >= 1"),
        (
            {"reward_funcs": "m:f", "vllm_mode": "remote"},
            "vllm_mode: 'remote' is not one of colocate, server",
        ),
        ({"reward_funcs": "m:f", "num_beams": 4}, "num_beams: rollouts are sampled from the policy"),
        ({"reward_funcs": "m:f", "temperature": 0}, "temperature: must be positive when do_sample is true"),
        (
            {"reward_funcs": "m:f", "min_new_tokens": 20, "max_new_tokens": 10},
            "min_new_tokens: 20 is above max_new_tokens (10)",
        ),
        ({"reward_funcs": "m:f", "overlong_buffer_len": -1}, "overlong_buffer_len: must be >= 0"),
        (
            {"reward_funcs": "m:f", "overlong_buffer_len": 64, "max_new_tokens": 32},
            "overlong_buffer_len: 64 is above max_new_tokens (32)",
        ),
        ({"stage": "ppo", "reward_model": "rm", "overlong_buffer_len": 8}, "applies to stage grpo"),
        ({"stage": "sft", "mask_truncated_completions": True}, "applies to stage grpo"),
        ({"stage": "sft", "use_vllm": True}, "use_vllm: samples the RL stages' rollouts"),
        # held-out evaluation
        ({"stage": "sft", "eval_do_sample": True}, "eval_do_sample: samples the RL stages' held-out rollouts"),
        (
            {"reward_funcs": "m:f", "eval_do_sample": True, "do_sample": False},
            "eval_do_sample: samples held-out rollouts with the run's decoding keys, but do_sample is false",
        ),
    ],
)
def test_bad_grpo_settings_are_refused_by_key(keys, message):
    with pytest.raises(ConfigError, match=None) as caught:
        _grpo(**keys)
    assert message in str(caught.value)


def test_use_vllm_is_refused_by_name_in_one_line_before_data_and_weights_load(tmp_path):
    """The model folder does not exist: the refusal comes from the config alone."""
    result = run_cli(
        [
            "-m",
            "ulysses_pro",
            "train",
            "examples/grpo_quickstart.yaml",
            "model_name_or_path=no/such/model",
            "use_vllm=true",
            "vllm_mode=server",
            f"output_dir={tmp_path / 'out'}",
        ]
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "use_vllm" in lines[0], lines
    missing = importlib.util.find_spec("vllm") is None
    assert ("not installed" if missing else "not available yet") in lines[0]


def test_rollout_keys_reach_the_sampling_settings():
    config = _grpo(reward_funcs="m:f", stop="###", min_new_tokens=2, max_new_tokens=9, temperature=0.7)
    settings = SamplingSettings.from_generating(config.generating)
    assert settings.stop == ("###",) and settings.min_new_tokens == 2 and settings.max_new_tokens == 9
    assert settings.logit_temperature == 0.7
    assert (
        SamplingSettings.from_generating(
            _grpo(reward_funcs="m:f", do_sample=False).generating
        ).logit_temperature
        == 1
    )
    assert config.finetuning.rollout_engine == "batched" and config.finetuning.rollout_batch_size == 64


def test_reward_weights_from_the_command_line_become_floats():
    config = _grpo(reward_funcs="a:f,b:g", reward_weights="1,0.5")
    assert config.finetuning.reward_weights == [1.0, 0.5]
    assert config.finetuning.reward_funcs == ["a:f", "b:g"]


def test_reward_function_names_that_do_not_resolve_say_which(tmp_path):
    with pytest.raises(ConfigError, match="is not `package.module:function`"):
        load_reward_functions(["no_colon"])
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        load_reward_functions(["no_such_module_xyz:f"])
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        load_reward_functions([f"{COUNTING}:missing"])
    with pytest.raises(ConfigError, match="not found"):
        load_reward_functions(["rewards/none.py:f"], base_dir=tmp_path)


def _rollouts(completions, answer="17", **columns):
    prompt = PromptRow([1, 2, 3], "What number comes after 16?", answer, columns, "tasks.json:4")
    return [Rollout(prompt, [5], text, False) for text in completions]


def test_rewards_are_weighted_and_get_the_rows_columns(tmp_path):
    module = tmp_path / "custom.py"
    module.write_text(
        "def by_column(prompts, completions, answer, difficulty, **rest):\n"
        "    return [float(d) * (c == a) for c, a, d in zip(completions, answer, difficulty)]\n"
    )
    functions = load_reward_functions(
        [f"{COUNTING}:exact_answer", f"{module}:by_column"], weights=[1.0, 0.5], base_dir=tmp_path
    )
    totals, per_function = score(functions, _rollouts(["17", "18", " 17 ."], difficulty=4))
    assert per_function[f"{COUNTING}:exact_answer"] == [1.0, 0.0, 1.0]
    assert per_function[f"{module}:by_column"] == [4.0, 0.0, 0.0]  # " 17 ." is not the string "17"
    assert totals == [3.0, 0.0, 1.0]


def test_a_reward_function_returning_the_wrong_count_or_nan_is_named(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text(
        "def short(completions, **kw):\n    return [1.0]\n"
        "def nan(completions, **kw):\n    return [float('nan')] * len(completions)\n"
    )
    with pytest.raises(ValueError, match="short returned 1 values for 2 completions"):
        score(load_reward_functions([f"{module}:short"]), _rollouts(["a", "b"]))
    with pytest.raises(ValueError, match="tasks.json:4"):
        score(load_reward_functions([f"{module}:nan"]), _rollouts(["a", "b"]))


def test_completions_end_at_their_first_stop_token():
    assert cut_at_stop([4, 5, 2, 7, 2], [2]) == ([4, 5, 2], False)
    assert cut_at_stop([4, 5, 6], [2, 9]) == ([4, 5, 6], True)


def test_grpo_example_trains_through_the_cli(tmp_path):
    """examples/grpo_quickstart.yaml as shipped, with real sampling, on a tiny model for two steps."""
    out = tmp_path / "out"
    result = run_cli(
        [
            "-m",
            "ulysses_pro",
            "train",
            "examples/grpo_quickstart.yaml",
            "model_name_or_path=tiny:llama",
            "max_steps=2",
            "logging_steps=1",
            "max_samples=16",
            f"output_dir={out}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logs) == 2
    for key in (
        "reward",
        "reward_std",
        "rewards/exact_answer",
        "rewards/answer_overlap",
        "completions/mean_length",
        "entropy",
    ):
        assert key in logs[0]
    assert 1 <= logs[0]["completions/mean_length"] <= 12  # max_new_tokens: 12
    assert (out / "training_reward.png").exists()  # plot_loss: true plots the reward too

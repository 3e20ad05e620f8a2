"""Held-out evaluation of the RL stages (train/rl/held_out.py): what is logged, and that it is exact.

With the fixed completion table of test_grpo_parallel, the held-out rewards are known without the
trainer: the table's first completion of each held-out prompt, scored by the reward functions
themselves. The SP=2 vs one-process equality of `eval_reward` and `eval_kl` runs in
test_grpo_parallel's default cases; PPO's, at DP 2 x SP 2 with padding rows, in the slow run.
"""

from __future__ import annotations

import importlib.util
import zlib

import pytest
import torch
from transformers import TrainerCallback

from ulysses_pro.data.prompts import build_prompt_datasets
from ulysses_pro.models.loader import load_tokenizer
from ulysses_pro.train.rl.engines import SamplingSettings
from ulysses_pro.train.rl.held_out import held_out_batches, held_out_settings

from ...launcher import run_ranks
from ..harness import parallel_keys, run_training, training_config
from .fixed_rollouts import DATA, use_fixed_rollouts
from .reward_models import write_reward_models
from .test_grpo_parallel import CANDIDATES, REWARDS, VARYING, grpo_keys
from .test_ppo_parallel import ppo_keys


class CaptureEvaluations(TrainerCallback):
    def __init__(self):
        self.evaluations: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append({"step": state.global_step, **metrics})


def _evaluate_with_fixed_rollouts(rank, world_size, keys):
    use_fixed_rollouts()
    capture = CaptureEvaluations()
    result = run_training(callbacks=(capture,), **keys)
    return {**result, "evaluations": capture.evaluations} if rank == 0 else None


def _counting():
    spec = importlib.util.spec_from_file_location("counting_rewards", REWARDS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_held_out_means(keys: dict) -> dict[str, float]:
    """The means over the held-out prompts of their first table completion's rewards and length."""
    config = training_config(**keys)
    tokenizer = load_tokenizer(config.model)
    held_out = build_prompt_datasets(config.data, tokenizer, seed=config.training.seed).eval.rows
    counting = _counting()
    texts, lengths = [], []
    for prompt in held_out:
        start = zlib.crc32(bytes(str(prompt.prompt_ids), "ascii")) % len(CANDIDATES)
        ids = tokenizer.encode(CANDIDATES[start].format(answer=prompt.answer), add_special_tokens=False)
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
        lengths.append(len(ids) + 1)  # the completion ends with its stop token
    answers = [prompt.answer for prompt in held_out]
    prompts = [prompt.prompt for prompt in held_out]
    overlap = counting.answer_overlap(prompts, texts, answers)
    exact = counting.exact_answer(prompts, texts, answers)
    assert len(held_out) == keys["val_size"]
    count = len(held_out)
    return {
        "eval_reward": sum(o + 0.5 * e for o, e in zip(overlap, exact)) / count,
        "eval_rewards/answer_overlap": sum(overlap) / count,
        "eval_rewards/exact_answer": sum(exact) / count,
        "eval_completions/mean_length": sum(lengths) / count,
        "eval_completions/clipped_ratio": 0.0,
    }


def test_grpo_evaluation_logs_the_rewards_of_the_held_out_completions_at_each_eval_step(tmp_path):
    keys = grpo_keys(
        tmp_path,
        "eval",
        do_eval=True,
        val_size=5,
        per_device_eval_batch_size=2,  # 5 prompts: the last batch holds one
        eval_strategy="steps",
        eval_steps=2,
        per_device_train_batch_size=2,
        beta=0.1,
    )
    result = run_ranks(_evaluate_with_fixed_rollouts, 1, keys)[0]
    evaluations = result["evaluations"]
    # at eval_steps, and once at the end (transformers' step strategy; the workflow reuses it)
    assert [e["step"] for e in evaluations] == [2, 3]
    expected = _expected_held_out_means(keys)
    for evaluation in evaluations:
        for name, value in expected.items():
            assert evaluation[name] == pytest.approx(value, abs=1e-9), name
        # the policy has moved from the reference by then
        assert evaluation["eval_kl"] > 0
    assert expected["eval_reward"] > 0  # the table's completions are not all wrong


def test_held_out_prompts_are_the_eval_dataset_or_val_size_rows_left_out_of_training():
    base = {"stage": "grpo", "reward_funcs": f"{REWARDS}:exact_answer", "dataset": "demo_tasks"}
    base.update(dataset_dir=DATA, template="chatml", max_samples=12, do_eval=True)
    for keys in ({"eval_dataset": "demo_tasks_eval"}, {"val_size": 3}):
        config = training_config(**base, **keys)
        bundle = build_prompt_datasets(config.data, load_tokenizer(config.model), seed=config.training.seed)
        train, held_out = ([row.where for row in split.rows] for split in (bundle.train, bundle.eval))
        if "eval_dataset" in keys:  # the eval file's first max_samples rows; training keeps all of its own
            assert held_out == [f"{DATA}/demo_tasks_eval.json:{i}" for i in range(12)] and len(train) == 12
        else:  # 3 of the 12 training rows, none of them trained on
            assert len(held_out) == 3 and len(train) == 9 and not set(held_out) & set(train)


def test_held_out_batches_count_every_prompt_once_and_match_in_size_across_dp_ranks():
    for length in range(8):
        for batch_size, dp_size in [(1, 1), (2, 1), (2, 2), (3, 2), (2, 3), (4, 3)]:
            per_rank = [held_out_batches(length, batch_size, dp_size, rank) for rank in range(dp_size)]
            counted = sorted(i for batches in per_rank for indices, real in batches for i in indices[:real])
            assert counted == list(range(length)), (length, batch_size, dp_size)
            # the same batches, of the same sizes, on every DP rank, none above the batch size
            sizes = {tuple(len(indices) for indices, _ in batches) for batches in per_rank}
            assert len(sizes) == 1 and all(size <= batch_size for size in next(iter(sizes)))
            # padding rows come last in a batch and repeat a real prompt
            for batches in per_rank:
                assert all(indices[real:] == [0] * (len(indices) - real) for indices, real in batches)


def test_held_out_decoding_is_greedy_unless_asked_and_keeps_the_runs_lengths_and_stops():
    run = SamplingSettings(
        do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=12, min_new_tokens=2, stop=("\n",)
    )
    greedy = held_out_settings(run, sample=False)
    assert not greedy.do_sample
    assert (greedy.max_new_tokens, greedy.min_new_tokens, greedy.stop) == (12, 2, ("\n",))
    assert held_out_settings(run, sample=True) == run


@pytest.mark.slow
def test_ppo_evaluation_at_dp2_sp2_equals_one_process(tmp_path):
    reward_models = write_reward_models(tmp_path / "rm")
    evaluation = {
        "do_eval": True,
        "val_size": 5,  # 3 and 2 prompts on the DP ranks: the second runs a padding row
        "per_device_eval_batch_size": 2,
        "eval_strategy": "steps",
        "eval_steps": 2,  # PPO steps
    }
    reference = run_ranks(
        _evaluate_with_fixed_rollouts,
        1,
        ppo_keys(tmp_path, "ref", reward_models, "lora", per_device_train_batch_size=4, **evaluation),
    )[0]
    candidate = run_ranks(
        _evaluate_with_fixed_rollouts,
        4,
        ppo_keys(
            tmp_path,
            "sp",
            reward_models,
            "lora",
            per_device_train_batch_size=2,
            **parallel_keys(2, "ulysses"),
            **evaluation,
        ),
    )[0]
    ours, theirs = candidate["evaluations"], reference["evaluations"]
    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == [4, 6]  # PPO steps 2 and 3
    for a, b in zip(ours, theirs):
        for name in ("eval_reward", "eval_kl", "eval_completions/mean_length"):
            assert a[name] == pytest.approx(b[name], abs=1e-5), name
    assert theirs[-1]["eval_kl"] > 0


def _train_sampled(rank, world_size, keys):
    capture = CaptureEvaluations()
    result = run_training(callbacks=(capture,), **keys)
    steps = [e["step"] for e in capture.evaluations]
    return [(e["loss"], e["reward"]) for e in result["logged"]], result["grads"], steps


@pytest.mark.slow
def test_evaluating_every_step_leaves_the_training_run_unchanged(tmp_path):
    # real rollouts at temperature 0.7: the held-out ones (sampled too) must not draw from the run's
    # random state, nor touch what training logs and accumulates
    keys = {"max_steps": 4, "per_device_train_batch_size": 2, "val_size": 4, "beta": 0.1, "temperature": 0.7}
    keys.update(VARYING)
    plain = run_ranks(_train_sampled, 1, grpo_keys(tmp_path, "plain", **keys))[0]
    evaluated = run_ranks(
        _train_sampled,
        1,
        grpo_keys(
            tmp_path,
            "evaluated",
            **keys,
            do_eval=True,
            eval_strategy="steps",
            eval_steps=1,
            eval_on_start=True,
            eval_do_sample=True,
            per_device_eval_batch_size=2,
        ),
    )[0]
    assert (plain[2], evaluated[2]) == ([], [0, 1, 2, 3, 4])
    assert evaluated[0] == plain[0]
    assert len(evaluated[1]) == len(plain[1]) == 4
    for ours, theirs in zip(evaluated[1], plain[1]):
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs)

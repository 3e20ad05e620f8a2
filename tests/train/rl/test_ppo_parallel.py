"""PPO under sequence parallelism against one process, with fixed rollouts (and real ones).

Sampling is replaced by the GRPO tests' table of completions, so the runs differ only in how the
experience and the update are split (the `sampled` case keeps the batched rollout engine). Each case takes 3 PPO steps of ppo_epochs 2 (6 optimizer
updates: from the second pass of a step on, the ratio differs from 1 and the clip ranges act),
GA 2, with a reward model of the rm stage's layout (full or LoRA), score normalisation and reward
whitening on in some cases, and the adaptive KL controller always on.
"""

from __future__ import annotations

import pytest

from ulysses_pro.train.rl import rollout

from ...launcher import run_ranks
from ..harness import expected_layout, parallel_keys, relative_error, run_training
from ..test_sequence_parallel import DATA
from .reward_models import write_reward_models
from .test_grpo_parallel import fixed_completions

PPO_STEPS = 3
EPOCHS = 2


def _train(rank, world_size, keys):
    keys = dict(keys)
    if not keys.pop("sampled", False):
        rollout.PolicySampler.__call__ = fixed_completions
    result = run_training(**keys)
    return result if rank == 0 else None


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    return write_reward_models(tmp_path_factory.mktemp("reward_models"))


def ppo_keys(tmp_path, name, reward_models, kind, **keys):
    base = {
        "stage": "ppo",
        "dataset": "demo_tasks",
        "dataset_dir": DATA,
        "template": "chatml",
        "max_samples": 32,
        "cutoff_len": 64,
        "max_steps": PPO_STEPS,
        "ppo_epochs": EPOCHS,
        "finetuning_type": kind,
        "reward_model": str(reward_models[kind]),
        "reward_model_type": kind,
        "gradient_accumulation_steps": 2,
        # the examples' rollout settings; log-probs are taken at `temperature`
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 8,
        "output_dir": str(tmp_path / name),
    }
    return {**base, **keys}


CASES = [
    # (world, sp, mode, reward model / policy kind, keys)
    # log-probs at temperature 0.7 (the slow cases at 1.0)
    (2, 2, "zigzag-ring", "full", {"ppo_score_norm": True, "ppo_whiten_rewards": True, "temperature": 0.7}),
    # real rollouts from the batched engine (GRPO's default run has its sampled case)
    pytest.param(2, 2, "ulysses", "full", {"sampled": True, "temperature": 0.7}, marks=pytest.mark.slow),
    # DP 2 x SP 2 (slow: GRPO's default run has its DP x SP case, and the rollout path is shared)
    pytest.param(4, 2, "ulysses", "lora", {}, marks=pytest.mark.slow),
    pytest.param(2, 2, "ulysses", "lora", {"ppo_score_norm": True}, marks=pytest.mark.slow),
    pytest.param(4, 4, "hybrid", "full", {"ppo_whiten_rewards": True}, marks=pytest.mark.slow),
    pytest.param(4, 4, "zigzag-ring", "lora", {"ppo_buffer_size": 2}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("world", "sp", "mode", "kind", "keys"), CASES)
def test_ppo_matches_single_process_with_fixed_rollouts(tmp_path, reward_models, world, sp, mode, kind, keys):
    dp = world // sp
    reference = run_ranks(
        _train, 1, ppo_keys(tmp_path, "ref", reward_models, kind, per_device_train_batch_size=2 * dp, **keys)
    )[0]
    candidate = run_ranks(
        _train,
        world,
        ppo_keys(
            tmp_path,
            "sp",
            reward_models,
            kind,
            per_device_train_batch_size=2,
            **parallel_keys(sp, mode),
            **keys,
        ),
    )[0]
    assert candidate["layout"] == expected_layout(sp, mode)
    updates = PPO_STEPS * EPOCHS * keys.get("ppo_buffer_size", 1)
    assert len(reference["grads"]) == len(candidate["grads"]) == updates
    assert len(reference["losses"]) == len(candidate["losses"]) == PPO_STEPS
    loss_errors = [abs(a - b) for a, b in zip(reference["losses"], candidate["losses"])]
    grad_errors = [relative_error(a, b) for a, b in zip(reference["grads"], candidate["grads"])]
    assert max(loss_errors) <= 1e-5, (reference["losses"], candidate["losses"])
    assert max(grad_errors) <= 1e-4, grad_errors
    # per-sequence sums of log-prob differences: fp32 noise of ~1e-6 per token adds up
    for key in ("reward", "kl", "kl_coef", "value_loss"):
        assert candidate["metrics"][key] == pytest.approx(reference["metrics"][key], rel=1e-4, abs=1e-5), key
    # the second pass of each step trains on a moved policy: the objective is more than a plain
    # policy gradient there
    assert reference["metrics"]["approx_kl"] > 0

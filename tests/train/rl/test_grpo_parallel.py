"""GRPO under sequence parallelism against one process, with fixed rollouts (and real ones).

Sampling is replaced by a table of completions per prompt (same on every rank and every run), so the
only difference between the runs is how the update is split: SP degree and mode, GA 2, DP 2 x SP 2,
both loss normalisations, with and without the KL term, log-probs at temperature 1.0 and 0.7. The
rewards are the real rule rewards of examples/rewards/counting.py. The `sampled` cases keep the
batched rollout engine: one process and the SP group's rank 0 sample alike from the same seeds.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from ulysses_pro.train.rl import rollout

from ...launcher import run_ranks
from ..harness import expected_layout, parallel_keys, relative_error, run_training
from ..test_sequence_parallel import DATA
from .reward_functions import CALL_LOG
from .reward_models import write_reward_models

REWARDS = str(Path(__file__).resolve().parents[3] / "examples" / "rewards" / "counting.py")
# Sampled completions of the untrained model never match an answer: a reward that varies anyway.
VARYING = {
    "reward_funcs": [f"{Path(__file__).with_name('reward_functions.py')}:distinct_characters"],
    "reward_weights": [1.0],
}
STEPS = 3
GENERATIONS = 4
# Held-out evaluation (train/rl/held_out.py) at step 2 and at the end: 4 prompts, batches of 2.
HELD_OUT = {
    "do_eval": True,
    "val_size": 4,
    "per_device_eval_batch_size": 2,
    "eval_strategy": "steps",
    "eval_steps": 2,
}

# Completions of different lengths and rewards, chosen per prompt by a hash of its ids.
CANDIDATES = ["{answer}", "{answer} {answer}", "no", "{answer} and more words here", "seven", ""]


def fixed_completions(self, model, prompts, num_generations, step):
    """Stands in for PolicySampler.__call__: a deterministic table, ending with the stop token."""
    out = []
    for prompt in prompts:
        start = zlib.crc32(bytes(str(prompt.prompt_ids), "ascii")) % len(CANDIDATES)
        texts = [
            CANDIDATES[(start + i) % len(CANDIDATES)].format(answer=prompt.answer)
            for i in range(num_generations)
        ]
        out.append([self.tokenizer.encode(t, add_special_tokens=False) + self.stop_ids[:1] for t in texts])
    return out


def _train(rank, world_size, keys):
    keys = dict(keys)
    if not keys.pop("sampled", False):
        rollout.PolicySampler.__call__ = fixed_completions
    result = run_training(**keys)
    return result if rank == 0 else None


def grpo_keys(tmp_path, name, **keys):
    base = {
        "stage": "grpo",
        "model_name_or_path": "tiny:llama",
        "dataset": "demo_tasks",
        "dataset_dir": DATA,
        "template": "chatml",
        "max_samples": 32,
        "cutoff_len": 64,
        "max_steps": STEPS,
        "num_generations": GENERATIONS,
        "reward_funcs": [f"{REWARDS}:answer_overlap", f"{REWARDS}:exact_answer"],
        "reward_weights": [1.0, 0.5],
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
    # (world, sp, mode, keys): both normalisations, the KL term and DP x SP by default; the rest slow
    (2, 2, "zigzag-ring", {"loss_normalization": "sequence", "beta": 0.1}),
    # DP 2 x SP 2: the shared rollout loop's DP x SP split runs by default in the PPO tests; 5
    # held-out prompts over 2 DP ranks (one pads its last batch)
    pytest.param(
        4, 2, "ulysses", {"loss_normalization": "token", **HELD_OUT, "val_size": 5}, marks=pytest.mark.slow
    ),
    # two updates per rollout (old log-probs at temperature 0.7, the clip acts) and a LoRA reward
    # model beside the rules
    (
        2,
        2,
        "ulysses",
        {
            "num_iterations": 2,
            "max_steps": 4,
            "learning_rate": 1e-2,
            "finetuning_type": "lora",
            "reward_model": "lora",
            "temperature": 0.7,
        },
    ),
    # real rollouts from the batched engine at temperature 0.7 (the SP group's rank 0 samples and
    # broadcasts): the same seeds and weights sample the same completions as one process; so do
    # the greedy held-out rollouts, whose reward and KL are logged
    (
        2,
        2,
        "ulysses",
        {"sampled": True, "temperature": 0.7, "num_iterations": 2, "beta": 0.1, **VARYING, **HELD_OUT},
    ),
    # held-out rollouts sampled (eval_do_sample) at the run's temperature, from the same seeds
    pytest.param(
        2,
        2,
        "zigzag-ring",
        {"sampled": True, "loss_normalization": "sequence", **VARYING, **HELD_OUT, "eval_do_sample": True},
        marks=pytest.mark.slow,
    ),
    pytest.param(2, 2, "ulysses", {"loss_normalization": "token"}, marks=pytest.mark.slow),
    pytest.param(
        4,
        4,
        "hybrid",
        {"loss_normalization": "token", "beta": 0.1, "finetuning_type": "lora"},
        marks=pytest.mark.slow,
    ),
    pytest.param(4, 2, "ulysses", {"loss_normalization": "sequence", "beta": 0.1}, marks=pytest.mark.slow),
    pytest.param(4, 4, "ulysses", {"loss_normalization": "sequence"}, marks=pytest.mark.slow),
    pytest.param(
        4,
        4,
        "zigzag-ring",
        {"num_iterations": 2, "max_steps": 4, "learning_rate": 1e-2},
        marks=pytest.mark.slow,
    ),
]


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    return write_reward_models(tmp_path_factory.mktemp("grpo_reward_models"))


@pytest.mark.parametrize(("world", "sp", "mode", "keys"), CASES)
def test_grpo_matches_single_process_with_fixed_rollouts(
    tmp_path, reward_models, monkeypatch, world, sp, mode, keys
):
    monkeypatch.setenv(CALL_LOG, str(tmp_path / "reference_reward_calls.txt"))
    dp = world // sp
    if "reward_model" in keys:
        kind = keys["reward_model"]
        keys = {**keys, "reward_model": str(reward_models[kind]), "reward_model_type": kind}
        keys["reward_weights"] = [1.0, 0.5, 0.3]
    reference = run_ranks(_train, 1, grpo_keys(tmp_path, "ref", per_device_train_batch_size=2 * dp, **keys))[
        0
    ]
    monkeypatch.setenv(CALL_LOG, str(tmp_path / "reward_calls.txt"))
    candidate = run_ranks(
        _train,
        world,
        grpo_keys(tmp_path, "sp", per_device_train_batch_size=2, **parallel_keys(sp, mode), **keys),
    )[0]
    if keys.get("sampled"):
        # each SP group's rank 0 scores its completions, as often as one process does; the others
        # get the result
        once = len((tmp_path / "reference_reward_calls.txt").read_text().split())
        ranks = (tmp_path / "reward_calls.txt").read_text().split()
        assert once > 0 and sorted(ranks) == sorted(str(r) for r in range(0, world, sp) for _ in range(once))
    assert candidate["layout"] == expected_layout(sp, mode)
    assert len(reference["losses"]) == len(candidate["losses"]) == keys.get("max_steps", STEPS)
    loss_errors = [abs(a - b) for a, b in zip(reference["losses"], candidate["losses"])]
    grad_errors = [relative_error(a, b) for a, b in zip(reference["grads"], candidate["grads"])]
    assert max(loss_errors) <= 1e-5, (reference["losses"], candidate["losses"])
    assert max(grad_errors) <= 1e-4, grad_errors
    # the same rollouts were scored the same way
    for ours, theirs in zip(candidate["logged"], reference["logged"]):
        if "reward" in theirs:
            assert ours["reward"] == pytest.approx(theirs["reward"], abs=1e-5)
    if keys.get("num_iterations", 1) > 1:
        # the second update of each rollout moved away from the sampling policy and was clipped
        clipped = [entry["clip_ratio"] for entry in reference["logged"]]
        assert max(clipped) > 0
        assert [e["clip_ratio"] for e in candidate["logged"]] == pytest.approx(clipped, abs=1e-6)
    if "reward_model" in keys:
        assert any("rewards/reward_model" in entry for entry in reference["logged"])
    if keys.get("do_eval"):
        _check_held_out_evaluations(tmp_path, keys)


def _check_held_out_evaluations(tmp_path, keys):
    """The held-out means (over every DP rank's prompts) equal one process's at every evaluation."""
    ours, theirs = (
        [
            e
            for e in json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"]
            if "eval_reward" in e
        ]
        for run in ("sp", "ref")
    )
    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == [2, STEPS]
    assert all(("eval_kl" in e) == bool(keys.get("beta")) for e in ours + theirs)
    for a, b in zip(ours, theirs):
        for name in (
            "eval_reward",
            "eval_kl",
            "eval_completions/mean_length",
            "eval_completions/clipped_ratio",
        ):
            if name in b:
                assert a[name] == pytest.approx(b[name], abs=1e-5), (name, a, b)

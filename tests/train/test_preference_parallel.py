"""DESIGN contract 8 for the sequence-loss stages (dpo family, kto, rm): SP=N reproduces SP=1.

Each case trains 4 optimizer steps through the real config -> data -> trainer path on gloo ranks
and compares every step's loss (|delta|/loss <= 1e-5) and gradients (relative error <= 1e-4)
against one process holding the whole global batch. GA = 2 runs in every case, so the sequence
count of a step spans two micro-batches.
"""

from __future__ import annotations

import pytest

from ..launcher import run_ranks
from .harness import expected_layout, parallel_keys, run_training
from .test_sequence_parallel import MODES, case_keys, compare

STAGE_DATA = {"dpo": "demo_pairs", "kto": "demo_kto", "rm": "demo_chat_pairs"}


def _train(rank, world_size, keys):
    result = run_training(**keys)
    return result if rank == 0 else None


def preference_case(tmp_path, world: int, stage: str, sp: int, mode: str, **keys):
    """Run SP=`sp` on `world` ranks and SP=1 on one process with the same global batch; compare."""
    batch = 2
    shared = {
        "stage": stage,
        "dataset": STAGE_DATA[stage],
        "gradient_accumulation_steps": 2,
        "cutoff_len": 64,
        **keys,
    }
    dp = world // sp
    if "per_device_eval_batch_size" in keys:
        # KTO's reference point spans one global evaluation batch, as it does in training.
        shared["per_device_eval_batch_size"] = keys["per_device_eval_batch_size"] * dp
    reference = run_training(**case_keys(tmp_path, "ref", per_device_train_batch_size=batch * dp, **shared))
    candidate = run_ranks(
        _train,
        world,
        case_keys(
            tmp_path,
            "sp",
            per_device_train_batch_size=batch,
            **parallel_keys(sp, mode),
            **shared,
        ),
    )[0]
    assert candidate["layout"] == expected_layout(sp, mode)
    return reference, candidate, compare(reference, candidate)


# 37 rows keep 32 for training: the 4 steps read one whole epoch, split evenly over the DP ranks.
EVAL_FIVE = {"do_eval": True, "val_size": 5, "max_samples": 37, "per_device_eval_batch_size": 2}

CASES = [
    # (world, stage, sp, mode, keys)
    (
        2,
        "dpo",
        2,
        "ulysses",
        {
            "pref_loss": "sigmoid",
            "dpo_label_smoothing": 0.1,
            "pref_ftx": 0.5,
            # evaluation under SP: the same eval loss and rewards as SP=1
            "do_eval": True,
            "eval_dataset": "demo_chat_pairs",
            "per_device_eval_batch_size": 3,
        },
    ),
    (2, "dpo", 2, "zigzag-ring", {"pref_loss": "ipo", "pref_bco_weight": 0.5}),
    # one held-out pair on 2 DP ranks: rank 1 runs only a padding batch (its rows have no answer
    # tokens, so ipo's length-normalised log-probs are 0 / 0 there) and still reduces every metric
    (
        2,
        "dpo",
        1,
        "ulysses",
        {
            "pref_loss": "ipo",
            "do_eval": True,
            "val_size": 1,
            "max_samples": 33,
            "per_device_eval_batch_size": 2,
        },
    ),
    # DP 2 (no SP): BCO's reward shift is one running mean over the steps and both DP ranks;
    # 5 held-out pairs over 2 DP ranks: one rank runs a padding batch, no pair counts twice
    (2, "dpo", 1, "ulysses", {"pref_loss": "sigmoid", "pref_bco_weight": 0.5, **EVAL_FIVE}),
    (2, "dpo", 2, "ulysses", {"pref_loss": "orpo", "finetuning_type": "lora"}),
    (2, "kto", 2, "zigzag-ring", {"finetuning_type": "lora", "kto_rejected_weight": 1.5}),
    (2, "rm", 2, "ulysses", {}),
    pytest.param(4, "dpo", 4, "hybrid", {"pref_loss": "hinge"}, marks=pytest.mark.slow),
    # DP 2 x SP 2: the KL reference point spans both DP ranks, in training and in evaluation
    (4, "kto", 2, "ulysses", EVAL_FIVE),
    (4, "dpo", 2, "zigzag-ring", {"pref_split_backward": True, "finetuning_type": "lora"}),  # DP 2 x SP 2
]


@pytest.mark.parametrize(("world", "stage", "sp", "mode", "keys"), CASES)
def test_sequence_stages_match_single_process(tmp_path, world, stage, sp, mode, keys):
    reference, candidate, _ = preference_case(tmp_path, world, stage, sp, mode, **keys)
    assert candidate["metrics"].keys() == reference["metrics"].keys()
    for key in ("rewards/chosen", "rewards/margins", "logps/rejected", "eval_rewards/accuracies", "eval_kl"):
        if key in reference["metrics"] or key in reference["eval_metrics"]:
            got = candidate["metrics"].get(key, candidate["eval_metrics"].get(key))
            want = reference["metrics"].get(key, reference["eval_metrics"].get(key))
            # Rewards are small differences of large log-prob sums (cancellation after a few Adam steps).
            assert got == pytest.approx(want, rel=1e-3, abs=1e-3), key
    assert ("eval_rewards/chosen" in candidate["eval_metrics"]) == bool(keys.get("do_eval"))


LOSSES = [("dpo", {"pref_loss": loss}) for loss in ("sigmoid", "hinge", "ipo", "simpo", "orpo")] + [
    ("kto", {}),
    ("rm", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sp", "mode"), [(sp, mode) for sp in (2, 4) for mode in MODES if sp == 4 or mode != "hybrid"]
)
@pytest.mark.parametrize(("stage", "keys"), LOSSES)
def test_sweep(tmp_path, stage, keys, mode, sp):
    """Every pref_loss, KTO and RM at SP 2 (ulysses, ring) and SP 4 (every mode; pytest -m slow)."""
    preference_case(tmp_path, sp, stage, sp, mode, **keys)

"""DAPO's overlong handling in GRPO: the soft punishment's values, and truncated completions left out of
the loss with the punishment added to their rewards in a real run."""

from __future__ import annotations

import pytest

from ulysses_pro.parallel.reduce import IGNORE_INDEX
from ulysses_pro.train.rl import grpo_trainer
from ulysses_pro.train.rl.overlong import soft_overlong_penalty

from ..harness import run_training
from .fixed_rollouts import fixed_rollout_keys


def test_the_soft_overlong_penalty_ramps_linearly_over_the_buffer_to_minus_the_factor():
    # limit 10, buffer 4: free up to 6 tokens, then -1/4 per token down to -1 at the limit
    lengths = [0, 5, 6, 7, 8, 9, 10]
    assert soft_overlong_penalty(lengths, [10] * 7, 4, 1.0) == [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0]
    assert soft_overlong_penalty([8, 10], [10, 10], 4, 0.5) == [-0.25, -0.5]
    # each completion against its own limit (a prompt the cutoff leaves less room)
    assert soft_overlong_penalty([8, 8], [10, 8], 4, 1.0) == [-0.5, -1.0]
    assert soft_overlong_penalty([10], [10], 0, 1.0) == [0.0]  # buffer 0: off


def test_grpo_leaves_truncated_completions_out_of_the_loss_and_adds_the_overlong_penalty(
    tmp_path, monkeypatch
):
    rows: list[tuple[object, dict]] = []
    plain_row = grpo_trainer.completion_row

    def recording(rollout, trained=True):
        row = plain_row(rollout, trained)
        rows.append((rollout, row))
        return row

    monkeypatch.setattr(grpo_trainer, "completion_row", recording)
    buffer, factor = 3, 0.5
    result = run_training(
        **fixed_rollout_keys(
            "grpo",
            tmp_path,
            output_dir=str(tmp_path / "out"),
            max_steps=1,
            gradient_accumulation_steps=1,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=6,  # a random tiny model rarely stops by itself: most completions are cut
            mask_truncated_completions=True,
            overlong_buffer_len=buffer,
            overlong_penalty_factor=factor,
        )
    )
    truncated = [row for rollout, row in rows if rollout.truncated]
    kept = [row for rollout, row in rows if not rollout.truncated]
    assert truncated, "no completion reached the limit"
    for row in truncated:
        assert set(row["shift_labels"]) == {IGNORE_INDEX}
    for rollout, row in rows:
        if not rollout.truncated:
            assert sum(t != IGNORE_INDEX for t in row["shift_labels"]) == len(rollout.completion_ids)
    penalties = soft_overlong_penalty(
        [len(r.completion_ids) for r, _ in rows], [r.budget for r, _ in rows], buffer, factor
    )
    assert min(penalties) == -factor
    logged = result["logged"][0]
    assert logged["rewards/overlong_penalty"] == pytest.approx(sum(penalties) / len(penalties), abs=1e-6)
    assert logged["completions/clipped_ratio"] == pytest.approx(len(truncated) / len(rows), abs=1e-6)
    if not kept:  # every completion masked: the step trains on nothing
        assert logged["loss"] == 0

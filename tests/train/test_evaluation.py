"""eval_loss is the exact mean over the held-out set: independent of the evaluation batch size and
of the DP split (the DP and DP x SP cases live with the equivalence tests), with no row counted twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ulysses_pro.parallel.reduce import IGNORE_INDEX
from ulysses_pro.train.evaluation import PADDING_BATCH, EvaluationCollator, EvaluationRows
from ulysses_pro.train.stages import run_stage

from .harness import training_config

DATA = str(Path(__file__).resolve().parents[2] / "data")


def _token_mean(model, rows) -> float:
    """Sum of every held-out target's cross-entropy over the number of targets, one row at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0].double()
            targets = torch.tensor(row["shift_labels"])
            total += float(F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int(targets.ne(IGNORE_INDEX).sum())
    return total / count


def test_eval_loss_is_the_token_mean_whatever_the_batch_size(tmp_path):
    eval_losses = []
    for eval_batch in (1, 2, 5):
        config = training_config(
            dataset="demo_chat",
            dataset_dir=DATA,
            max_samples=24,
            val_size=5,
            do_eval=True,
            max_steps=1,
            learning_rate=0.0,
            per_device_eval_batch_size=eval_batch,
            output_dir=str(tmp_path / f"eval{eval_batch}"),
        )
        trainer = run_stage(config)
        eval_losses.append(trainer.state.log_history[-1]["eval_loss"])
    # Rows differ in length, so a mean of per-batch means would move with the batch size.
    expected = _token_mean(trainer.model.eval(), trainer.eval_dataset)
    assert eval_losses == pytest.approx([expected] * 3, rel=1e-6)


def test_compute_accuracy_is_the_share_of_targets_predicted_exactly(tmp_path):
    config = training_config(
        dataset="demo_chat",
        dataset_dir=DATA,
        max_samples=24,
        val_size=5,
        do_eval=True,
        max_steps=3,
        per_device_eval_batch_size=2,
        compute_accuracy=True,
        output_dir=str(tmp_path / "acc"),
    )
    trainer = run_stage(config)
    reported = trainer.state.log_history[-1]["eval_accuracy"]
    hits, count = 0, 0
    with torch.no_grad():
        for row in trainer.eval_dataset:
            logits = trainer.model.eval()(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            targets = torch.tensor(row["shift_labels"])
            kept = targets.ne(IGNORE_INDEX)
            hits += int((logits.argmax(-1)[kept] == targets[kept]).sum())
            count += int(kept.sum())
    assert reported == pytest.approx(hits / count, abs=1e-12) and 0 < reported < 1


def test_a_padding_batch_has_no_targets_and_says_so():
    rows = [{"input_ids": [5, 6, 7], "shift_labels": [6, 7, IGNORE_INDEX]}]

    def collate(batch_rows):
        assert all(PADDING_BATCH not in row for row in batch_rows)  # the marker never reaches a collator
        return {"shift_labels": torch.tensor([row["shift_labels"] for row in batch_rows])}

    collator, dataset = EvaluationCollator(collate), EvaluationRows(rows)
    assert len(dataset) == 1  # the padding copy is not a sample
    real, padding = collator([dataset[0]]), collator([dataset[1]])
    assert PADDING_BATCH not in real and real["shift_labels"].tolist() == [[6, 7, IGNORE_INDEX]]
    assert padding[PADDING_BATCH] is True
    assert padding["shift_labels"].eq(IGNORE_INDEX).all()

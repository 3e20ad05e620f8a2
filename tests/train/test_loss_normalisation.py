"""DESIGN contract 6 at SP=1: the same global batch gives the same gradients however it is split.

Per-device batch 4 x GA 1 on one rank, 2 x GA 2 on one rank, and 2 x GA 1 on two gloo ranks must
agree to fp32 rounding on rows with very different numbers of trained tokens.
"""

from __future__ import annotations

import json

from ..launcher import run_ranks
from .harness import relative_error, run_training

ROWS = [
    {"instruction": "Count from 1 to 30.", "output": " ".join(str(i) for i in range(1, 31))},
    {"instruction": "Opposite of hot?", "output": "cold"},
    {"instruction": "Repeat apple five times.", "output": "apple apple apple apple apple"},
    {
        "instruction": "What day comes after Monday? Answer with a long sentence.",
        "output": "The day after Monday is Tuesday, as every week shows.",
    },
]


def step_gradients(dataset_dir: str, output_dir: str, per_device: int, accumulation: int):
    result = run_training(
        dataset="rows",
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
    )
    return result["grads"][0]


def _rank_gradients(rank, world_size, dataset_dir, output_dir):
    grads = step_gradients(dataset_dir, output_dir, per_device=2, accumulation=1)
    return grads if rank == 0 else None


def test_gradients_equal_across_accumulation_and_ranks(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    reference = step_gradients(str(tmp_path), str(tmp_path / "a"), per_device=4, accumulation=1)
    accumulated = step_gradients(str(tmp_path), str(tmp_path / "b"), per_device=2, accumulation=2)
    distributed = run_ranks(_rank_gradients, 2, str(tmp_path), str(tmp_path / "c"))[0]
    assert relative_error(reference, accumulated) <= 1e-5
    assert relative_error(reference, distributed) <= 1e-5
    # Normalising each micro-batch by its own token count (the classic GA bug) gives ~0.8 relative
    # error here, so the tolerance above separates right from wrong by five orders of magnitude.
    assert max(float(g.abs().max()) for g in reference.values()) > 0

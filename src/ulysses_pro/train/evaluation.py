"""Evaluation that counts every held-out row exactly once, whatever the DP x SP split.

transformers' evaluation loop pads the last batches of short DP ranks with repeated rows and
averages per-batch losses; here the DP shares are disjoint (`EvaluationBatches`), a short rank runs
padding batches that contribute nothing, and `eval_loss` is sum / count over the whole set: the
token mean for token losses, the mean over sequences (pairs, KTO examples) for sequence losses.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from ..parallel.reduce import IGNORE_INDEX

# Marks a padding batch: a Python bool in the batch dict, so reading it never syncs a device.
PADDING_BATCH = "evaluation_padding"


class EvaluationRows(Dataset):
    """The evaluation rows, plus index `len(rows)`: a copy of row 0 served as padding."""

    def __init__(self, rows: Dataset) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)  # the real rows only: transformers reports this as the sample count

    def __getitem__(self, index: int) -> dict:
        if index == len(self.rows):
            return {**self.rows[0], PADDING_BATCH: True}
        return self.rows[index]


class EvaluationCollator:
    """Collates as `collate` does; a padding batch loses every target and carries `PADDING_BATCH`."""

    def __init__(self, collate: Callable) -> None:
        self.collate = collate

    def __call__(self, rows: list[dict]) -> dict:
        padding = any(row.get(PADDING_BATCH, False) for row in rows)
        batch = self.collate([{k: v for k, v in row.items() if k != PADDING_BATCH} for row in rows])
        if padding:
            batch["shift_labels"].fill_(IGNORE_INDEX)
            batch[PADDING_BATCH] = True
        return batch

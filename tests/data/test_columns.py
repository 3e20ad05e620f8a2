"""Column-wise row storage: the same rows back, at 4 bytes per token."""

from __future__ import annotations

import pytest

from ulysses_pro.data.columns import ColumnarRows
from ulysses_pro.data.pipeline import TokenizedDataset


def test_rows_round_trip_with_lists_ints_and_bools():
    rows = [
        {"input_ids": [5, 6, 7], "shift_labels": [6, 7, -100], "kl_input_ids": [1], "kto_label": True},
        {"input_ids": [], "shift_labels": [], "kl_input_ids": [2, 3], "kto_label": False},
        {"input_ids": [2**31 - 1], "shift_labels": [-100], "kl_input_ids": [4], "kto_label": True},
    ]
    store = ColumnarRows.from_rows(rows)
    assert [store[i] for i in range(3)] == rows
    assert store[-1] == rows[2]
    assert isinstance(store[0]["kto_label"], bool)
    with pytest.raises(IndexError):
        store[3]
    tokens = sum(len(r[k]) for r in rows for k in ("input_ids", "shift_labels", "kl_input_ids"))
    assert store.nbytes() == 4 * tokens + 3 * 8 * (len(rows) + 1) + 8 * len(rows)
    dataset = TokenizedDataset(rows)
    assert dataset.rows == rows and dataset.row_lengths() == [4, 2, 2]

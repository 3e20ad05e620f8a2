"""Bin packing and the collator."""

from __future__ import annotations

import random

import pytest
import torch

from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.data.packing import best_fit_decreasing, next_fit, pack_documents, report, shifted, windows
from ulysses_pro.data.templates import IGNORE_INDEX


def test_best_fit_decreasing_places_every_document_within_capacity():
    rng = random.Random(0)
    lengths = [min(int(rng.paretovariate(1.2) * 10), 128) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # Near the lower bound: never more than 5% above the total-length bound on this skewed sample.
    assert len(bins) <= 1.05 * (-(-sum(lengths) // 128)) + 1


def test_best_fit_refuses_oversized_documents():
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([5, 11], 10)


def test_pack_documents_restarts_positions_and_keeps_labels():
    docs = [shifted([1, 2, 3], [IGNORE_INDEX, 2, 3]), shifted([4, 5], [IGNORE_INDEX, 5])]
    (row,) = pack_documents(docs, 8, isolate=True)
    assert row["input_ids"] == [1, 2, 3, 4, 5]
    assert row["position_ids"] == [0, 1, 2, 0, 1]
    # The last token of each document has no target: no document learns to predict the next one.
    assert row["shift_labels"] == [2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]
    (running,) = pack_documents(docs, 8, isolate=False)
    assert running["position_ids"] == [0, 1, 2, 3, 4]


def test_windows_overlap_by_one_token_so_every_target_is_kept():
    assert windows(list(range(10)), 4) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert windows(list(range(11)), 4) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [9, 10]]
    assert windows([1, 2], 4) == [[1, 2]]
    ids = list(range(100))
    targets = [(a, b) for w in windows(ids, 7) for a, b in zip(w, w[1:])]
    assert targets == list(zip(ids, ids[1:]))


def skewed_lengths(count: int, capacity: int, seed: int = 0) -> list[int]:
    """Long-tailed document lengths: many short documents, a few close to the capacity."""
    rng = random.Random(seed)
    return [max(2, min(int(rng.lognormvariate(4.0, 1.0)), capacity)) for _ in range(count)]


def test_best_fit_uses_fewer_rows_than_greedy_concatenation_on_skewed_lengths():
    capacity = 512
    lengths = skewed_lengths(2000, capacity)
    best, greedy = best_fit_decreasing(lengths, capacity), next_fit(lengths, capacity)
    for bins in (best, greedy):
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert max(sum(lengths[i] for i in b) for b in bins) <= capacity
    lower_bound = -(-sum(lengths) // capacity)
    assert len(best) < len(greedy)
    assert len(best) <= 1.02 * lower_bound + 1, (len(best), lower_bound)


def test_packing_report_counts_padding_and_cut_documents():
    docs = [shifted([1] * n, [1] * n) for n in (6, 3, 3, 2)]
    rows = pack_documents(docs, 8, isolate=True)
    assert [r["document_lengths"] for r in rows] == [[6, 2], [3, 3]]
    assert all(len(r["input_ids"]) <= 8 for r in rows)
    summary = report(rows, 8, documents=3, cut_documents=1)
    assert summary.padding_rate == 1 - 14 / 16
    assert summary.truncation_rate == 1 / 3
    assert "12.5%" in summary.describe() and "33.3%" in summary.describe()


def test_collator_pads_and_masks():
    collate = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)
    batch = collate([shifted([5, 6, 7], [5, 6, 7]), shifted([8], [8])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["shift_labels"].tolist() == [[6, 7, -100, -100], [-100] * 4]
    # padding continues the row's positions: one document per row, no extra attention problem
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    packed = collate(pack_documents([shifted([1, 2], [1, 2]), shifted([3], [3])], 4, isolate=True))
    assert "attention_mask" not in packed
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1]]
    assert packed["input_ids"].dtype == torch.long

"""Bin packing and the collator."""

from __future__ import annotations

import random

import pytest
import torch

from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.data.packing import best_fit_decreasing, chunk_stream, pack_documents, shifted
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


def test_chunk_stream_blocks():
    rows = chunk_stream(list(range(10)), 4)
    assert [r["input_ids"] for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert rows[0]["shift_labels"] == [1, 2, 3, IGNORE_INDEX]


def test_collator_pads_and_masks():
    collate = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)
    batch = collate([shifted([5, 6, 7], [5, 6, 7]), shifted([8], [8])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["shift_labels"].tolist() == [[6, 7, -100, -100], [-100] * 4]
    packed = collate(pack_documents([shifted([1, 2], [1, 2]), shifted([3], [3])], 4, isolate=True))
    assert "attention_mask" not in packed
    assert packed["position_ids"].tolist() == [[0, 1, 0, 0]]
    assert packed["input_ids"].dtype == torch.long

"""A packed row is padded once, at its end, to the SP split unit; never per document."""

from __future__ import annotations

import torch

from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.data.packing import pack_documents, shifted
from ulysses_pro.parallel.plan import document_starts
from ulysses_pro.parallel.sharding import pad_for_sequence_parallel, split_for_sequence_parallel


def test_packed_row_is_padded_once_at_its_end():
    docs = [shifted([7] * n, [7] * n) for n in (5, 3, 2)]
    (row,) = pack_documents(docs, 16, isolate=True)
    batch = PaddingCollator(pad_token_id=0, document_lengths=True)([row])
    padded = pad_for_sequence_parallel(batch, unit=4, pad_token_id=0)
    assert padded["input_ids"].shape == (1, 12)
    # the ten real tokens are untouched and contiguous; the two extra ones sit at the end
    assert torch.equal(padded["input_ids"][0, :10], batch["input_ids"][0])
    assert padded["input_ids"][0, 10:].tolist() == [0, 0]
    assert padded["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    assert padded["shift_labels"][0, 10:].tolist() == [-100, -100]
    assert padded["document_lengths"][0].tolist() == [5] * 5 + [3] * 3 + [2] * 2 + [0, 0]
    # three documents; the padding continues the last one (it comes last and has no target, so no
    # real token sees it) instead of adding attention problems of its own
    assert document_starts(padded["position_ids"]) == [[0, 5, 8]]
    # each rank's shard keeps the per-document lengths of its tokens
    shards = [split_for_sequence_parallel(padded, 2, 1, rank, 0) for rank in range(2)]
    assert (
        torch.cat([s["document_lengths"] for s in shards], dim=1).tolist()
        == padded["document_lengths"].tolist()
    )

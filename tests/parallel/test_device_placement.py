"""Every tensor the SP path creates is created on the device of its inputs (DESIGN contract 9).

Inputs live on the CPU while factory calls default to the meta device (forward and the SP core's
backwards): a tensor created without `device=` lands on meta and the first operation mixing it
with a CPU tensor fails, as it would mix CPU and CUDA tensors on a GPU. Results must still equal
full attention, so the test also shows nothing was skipped.
"""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.data.packing import pack_documents, shifted
from ulysses_pro.parallel.sharding import pad_for_sequence_parallel, split_for_sequence_parallel

from ..device_context import factories_default_to
from ..launcher import run_ranks
from .test_attention import _check

CASES = [
    # (world, mode, kv_heads, packed, length): padded = length not a multiple of the split unit
    (2, "ulysses", 2, False, 23),  # padded
    (2, "ulysses", 1, True, 24),  # packed, GQA with 1 KV head < degree 2
    (2, "zigzag-ring", 2, True, 21),  # packed and padded
    (4, "zigzag-ring", 1, False, 29),  # padded, 1 KV head
    (4, "ulysses", 1, True, 30),  # GQA kv 1 < degree 4, packed, padded
    (4, "hybrid", 1, True, 27),  # a real ulysses 2 x ring 2 split, packed, padded
]


@pytest.mark.parametrize(("world", "mode", "kv_heads", "packed", "length"), CASES)
def test_sp_attention_creates_nothing_off_the_input_device(world, mode, kv_heads, packed, length):
    results = run_ranks(_check, world, mode, kv_heads, packed, length, "native", "meta")
    for rank, errors in enumerate(results):
        assert max(errors.values()) < 1e-10, (rank, errors)


def test_padding_and_splitting_keep_the_batch_device():
    docs = [shifted([7] * n, [7] * n) for n in (5, 3, 2)]
    batch = PaddingCollator(pad_token_id=0, document_lengths=True)(pack_documents(docs, 16, isolate=True))
    with factories_default_to("meta"):
        padded = pad_for_sequence_parallel(batch, unit=8, pad_token_id=0)
        shards = [split_for_sequence_parallel(padded, 2, 2, u, r) for r in range(2) for u in range(2)]
    for tensors in [padded, *shards]:
        assert all(t.device == torch.device("cpu") for t in tensors.values())
    assert sum(s["input_ids"].shape[1] for s in shards) == padded["input_ids"].shape[1] == 16

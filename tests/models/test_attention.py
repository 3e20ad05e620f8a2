"""The registered SP attention function: one metadata all-gather per forward, not per layer."""

from __future__ import annotations

import torch

from ..launcher import run_ranks


def _count_gathers(rank, world):
    from ulysses_pro.models import attention
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.parallel import init_sequence_parallel

    calls = []
    real = attention.full_sequence_metadata

    def counting(position_ids, layout):
        calls.append(position_ids.shape)
        return real(position_ids, layout)

    attention.full_sequence_metadata = counting
    model = build_tiny_model("llama", num_layers=3, seed=1)
    layout = init_sequence_parallel(world, "ulysses", num_heads=4, num_kv_heads=2)
    attention.apply_sequence_parallel(model, layout)
    ids = torch.randint(3, 500, (1, 4))  # this rank's shard of an 8-token sequence
    for _ in range(2):  # two batches, each with a new position-id tensor
        model(input_ids=ids, position_ids=torch.arange(4 * rank, 4 * rank + 4)[None])
    return len(calls)


def test_position_ids_are_gathered_once_per_forward():
    for gathers in run_ranks(_count_gathers, 2):
        assert gathers == 2  # 3 layers x 2 forwards would be 6 without the cache

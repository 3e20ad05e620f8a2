"""No host sync in the per-layer SP path (DESIGN contract 9), counted per forward + backward.

A tiny decoder runs one packed forward and backward at SP 2 / 4 in every mode with 1 and 3
layers. The host-syncing calls made anywhere (our code and transformers') must not grow with
depth, and the SP path's share is the plan's one read of the document starts (a nonzero and a
copy of the starts), once per forward.
"""

from __future__ import annotations

import pytest
import torch

from ..launcher import run_ranks


def _syncs(rank, world, mode, checkpointing):
    return [_syncs_at_depth(world, mode, layers, checkpointing) for layers in (1, 3)]


def _syncs_at_depth(world, mode, layers, checkpointing):
    from ulysses_pro.models.attention import apply_sequence_parallel
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.parallel import init_sequence_parallel
    from ulysses_pro.parallel.mesh import destroy_sequence_parallel
    from ulysses_pro.parallel.sharding import split_for_sequence_parallel

    from ..device_context import count_host_syncs

    model = build_tiny_model("llama", num_layers=layers, seed=1)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    degree = 2 if mode == "hybrid" else None
    layout = init_sequence_parallel(world, mode, num_heads=4, num_kv_heads=2, ulysses_degree=degree)
    if mode == "hybrid":
        assert (layout.ulysses_size, layout.ring_size) == (2, 2)
    apply_sequence_parallel(model, layout)
    ids = torch.randint(3, 500, (2, 32))
    positions = torch.cat([torch.arange(10), torch.arange(22)]).repeat(2, 1)  # two documents per row
    shard = split_for_sequence_parallel(
        {"input_ids": ids, "position_ids": positions},
        layout.ulysses_size,
        layout.ring_size,
        layout.ulysses_rank,
        layout.ring_rank,
    )
    with count_host_syncs() as calls:
        out = model(**shard, use_cache=False)
        out.logits.float().pow(2).mean().backward()
    destroy_sequence_parallel(layout)
    return list(calls)


@pytest.mark.parametrize(
    ("world", "mode", "checkpointing"),
    [(2, "ulysses", False), (2, "zigzag-ring", False), (4, "hybrid", False), (2, "zigzag-ring", True)],
)
def test_host_syncs_per_forward_do_not_grow_with_depth(world, mode, checkpointing):
    for few, many in run_ranks(_syncs, world, mode, checkpointing):
        assert few == many == ["nonzero", "tolist"], (few, many)

"""Head slices of the whole sequence over the SP group come back in global token order, in every
layout (contiguous shards and zigzag rings), and the inverse restores each rank's shard."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.parallel.mesh import destroy_sequence_parallel, init_sequence_parallel
from ulysses_pro.parallel.sharding import shard_indices
from ulysses_pro.parallel.whole_sequence import SequenceOrder, gather_heads, scatter_heads

from ..launcher import run_ranks

LENGTH = 32


def _round_trip(rank, world_size, mode):
    layout = init_sequence_parallel(
        world_size, mode, num_heads=4, num_kv_heads=4, ulysses_degree=2 if mode == "hybrid" else None
    )
    try:
        generator = torch.Generator().manual_seed(0)
        full_a = torch.randn(2, LENGTH, 4, 3, generator=generator, dtype=torch.float64)
        full_b = torch.randn(2, LENGTH, 8, 1, generator=generator, dtype=torch.float64)
        index = shard_indices(
            LENGTH, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
        )
        local_a = full_a[:, index].clone().requires_grad_(True)
        local_b = full_b[:, index].clone().requires_grad_(True)
        order = SequenceOrder.build(LENGTH, layout, torch.device("cpu"))
        whole_a, whole_b = scatter_heads([local_a, local_b], layout, order)
        # This rank's slice of the heads, every token, in global order.
        rank = layout.sp_rank
        assert torch.equal(whole_a, full_a[:, :, rank * 4 // world_size : (rank + 1) * 4 // world_size])
        assert torch.equal(whole_b, full_b[:, :, rank * 8 // world_size : (rank + 1) * 8 // world_size])
        back = gather_heads(whole_a * 2.0, layout, order)
        assert torch.equal(back, 2.0 * local_a)
        # Backward of the pair is the identity map composed the other way round.
        back.sum().backward()
        assert torch.equal(local_a.grad, torch.full_like(local_a, 2.0))
        return layout.ring_size
    finally:
        destroy_sequence_parallel(layout)


@pytest.mark.parametrize(("world", "mode", "ring"), [(2, "zigzag-ring", 2), (4, "hybrid", 2)])
def test_scatter_heads_gives_global_order_and_gather_inverts_it(world, mode, ring):
    assert run_ranks(_round_trip, world, mode) == [ring] * world


def test_contiguous_layouts_need_no_reordering():
    assert SequenceOrder.build(LENGTH, None, torch.device("cpu")) == SequenceOrder(None, None)

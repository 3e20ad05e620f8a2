"""Group layout and degree choice."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from ulysses_pro.parallel.mesh import (
    SequenceParallelLayout,
    default_ulysses_degree,
    destroy_sequence_parallel,
    init_sequence_parallel,
    resolve_degrees,
)

from ..launcher import run_ranks


def test_default_ulysses_degree_prefers_the_largest_that_fits():
    assert default_ulysses_degree(8, 32, 8) == 8
    assert default_ulysses_degree(8, 12, 4) == 4  # 8 does not divide 12 heads
    assert default_ulysses_degree(8, 32, 2) == 8  # 2 KV heads replicated 4x
    assert default_ulysses_degree(4, 6, 3) == 1  # 2 divides 6 heads but neither divides 3 KV heads
    assert resolve_degrees(8, "hybrid", 12, 4) == (4, 2)
    assert resolve_degrees(4, "zigzag-ring", 5, 1) == (1, 4)


def test_auto_mode_takes_the_largest_ulysses_degree_and_rings_the_rest():
    assert resolve_degrees(4, "auto", 4, 2) == (4, 1)  # heads divide: pure ulysses
    assert resolve_degrees(8, "auto", 12, 4) == (4, 2)  # 4 of 8 on ulysses, the ring for the rest
    assert resolve_degrees(4, "auto", 6, 3) == (1, 4)  # no shared factor with the KV heads: pure ring
    assert resolve_degrees(2, "auto", 9, 3) == (1, 2)
    assert resolve_degrees(8, "auto", 32, 8, ulysses_degree=2) == (2, 4)  # an explicit degree is kept
    layout = SequenceParallelLayout(world_size=8, rank=0, sp_size=8, ulysses_size=4, ring_size=2, mode="auto")
    assert "mode auto -> hybrid" in layout.describe()  # the log line says what auto chose


def test_ulysses_errors_name_a_fix():
    with pytest.raises(
        ValueError,
        match=r"does not divide the 6 attention heads; use sequence_parallel_mode: auto \(which picks hybrid \(ulysses 2 x ring 2\) here\)",
    ):
        resolve_degrees(4, "ulysses", 6, 6)
    with pytest.raises(ValueError, match=r"ulysses_degree=3 must divide"):
        resolve_degrees(4, "hybrid", 8, 8, ulysses_degree=3)


def _groups(rank, world):
    layout = init_sequence_parallel(4, "hybrid", num_heads=4, num_kv_heads=2, ulysses_degree=2)
    members = {
        name: dist.get_process_group_ranks(group)
        for name, group in (
            ("sp", layout.sp_group),
            ("ulysses", layout.ulysses_group),
            ("ring", layout.ring_group),
        )
    }
    peers = (layout.ring_global_rank(layout.ring_rank + 1), layout.ring_global_rank(layout.ring_rank - 1))
    destroy_sequence_parallel(layout)
    return members, peers, layout.split_unit


def test_hybrid_groups_on_four_ranks():
    results = run_ranks(_groups, 4)
    for rank, (members, peers, unit) in enumerate(results):
        assert members["sp"] == [0, 1, 2, 3]
        assert members["ulysses"] == ([0, 1] if rank < 2 else [2, 3])  # contiguous ranks
        assert members["ring"] == ([0, 2] if rank % 2 == 0 else [1, 3])
        assert peers == ((rank + 2) % 4, (rank + 2) % 4)
        assert unit == 2 * 2 * 2


def _collective_with_a_late_peer(rank, world, timeout_s):
    import time
    from datetime import timedelta

    import torch

    layout = init_sequence_parallel(
        2, "ulysses", num_heads=2, num_kv_heads=2, timeout=timedelta(seconds=timeout_s)
    )
    try:
        if rank == 1:
            time.sleep(3 * timeout_s)  # a hung peer: alive, sockets open, not joining the collective
        started = time.monotonic()
        try:
            dist.all_reduce(torch.ones(1), group=layout.ulysses_group)
            return ("completed", time.monotonic() - started)
        except RuntimeError as err:
            return ("timed out" if "Timed out" in str(err) else str(err), time.monotonic() - started)
    finally:
        destroy_sequence_parallel(layout)


def test_sequence_parallel_groups_honour_the_run_timeout():
    """Without `timeout` new groups take torch's 30-minute default, whatever ddp_timeout says."""
    waited_for_peer = run_ranks(_collective_with_a_late_peer, 2, 2.0)[0]
    assert waited_for_peer[0] == "timed out", waited_for_peer

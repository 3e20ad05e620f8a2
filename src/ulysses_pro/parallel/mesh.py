"""DP x SP process groups, with SP split into ulysses x ring.

Rank layout (world W, SP size P = U x R, DP = W / P):
- SP groups are contiguous: ranks [g*P, (g+1)*P) form SP group g (= DP rank g).
- Inside an SP group, ulysses groups are contiguous (all-to-all is the heaviest collective, so it
  gets the closest ranks); ring groups stride by U.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

MODES = ("auto", "ulysses", "zigzag-ring", "hybrid")


@dataclass(frozen=True)
class SequenceParallelLayout:
    """Where this rank sits in the DP x ulysses x ring grid, and the groups it talks to."""

    world_size: int
    rank: int
    sp_size: int
    ulysses_size: int
    ring_size: int
    mode: str
    sp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    ulysses_group: dist.ProcessGroup | None = None
    ring_group: dist.ProcessGroup | None = None

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def ulysses_rank(self) -> int:
        return self.sp_rank % self.ulysses_size

    @property
    def ring_rank(self) -> int:
        return self.sp_rank // self.ulysses_size

    @property
    def split_unit(self) -> int:
        """Sequence lengths must be a multiple of this to split evenly (DESIGN contract 2)."""
        return self.ulysses_size * (2 * self.ring_size if self.ring_size > 1 else 1)

    def ring_global_rank(self, ring_rank: int) -> int:
        """Global rank of a ring peer of this rank."""
        base = self.dp_rank * self.sp_size + self.ulysses_rank
        return base + (ring_rank % self.ring_size) * self.ulysses_size

    def describe(self) -> str:
        return (
            f"world {self.world_size} = dp {self.dp_size} x sp {self.sp_size} "
            f"(ulysses {self.ulysses_size} x ring {self.ring_size}, mode {self.mode}"
            f"{' -> ' + chosen_mode(self.ulysses_size, self.ring_size) if self.mode == 'auto' else ''}); "
            f"rank {self.rank}: dp_rank {self.dp_rank}, ulysses_rank {self.ulysses_rank}, ring_rank {self.ring_rank}"
        )


def default_ulysses_degree(sp_size: int, num_heads: int, num_kv_heads: int) -> int:
    """Largest U dividing both P and the query heads that also suits the KV heads.

    KV heads suit U when U divides them (each rank gets whole KV heads) or they divide U (each KV
    head is replicated U / kv times, just enough).
    """
    for degree in range(sp_size, 0, -1):
        if sp_size % degree or num_heads % degree:
            continue
        if num_kv_heads % degree == 0 or degree % num_kv_heads == 0:
            return degree
    return 1


def chosen_mode(ulysses_size: int, ring_size: int) -> str:
    """The explicit mode a (ulysses, ring) split amounts to."""
    if ring_size == 1:
        return "ulysses"
    return "zigzag-ring" if ulysses_size == 1 else "hybrid"


def resolve_degrees(
    sp_size: int, mode: str, num_heads: int, num_kv_heads: int, ulysses_degree: int | None = None
) -> tuple[int, int]:
    """(ulysses degree, ring degree) for a mode; raises naming the config key and a valid choice.

    `auto` takes the largest ulysses degree the query and KV heads allow and the ring for the rest:
    pure ulysses when the heads divide, pure ring when they share no factor with the SP size."""
    if mode not in MODES:
        raise ValueError(f"sequence_parallel_mode={mode!r} is not one of {', '.join(MODES)}")
    if sp_size == 1:
        return 1, 1
    if mode == "zigzag-ring":
        return 1, sp_size
    if mode == "ulysses":
        valid = default_ulysses_degree(sp_size, num_heads, num_kv_heads)
        instead = (
            f"hybrid (ulysses {valid} x ring {sp_size // valid})"
            if valid > 1
            else "zigzag-ring (the ring splits any head count)"
        )
        if num_heads % sp_size:
            raise ValueError(
                f"sequence_parallel_size={sp_size} does not divide the {num_heads} attention heads; "
                f"use sequence_parallel_mode: auto (which picks {instead} here) or a "
                f"sequence_parallel_size that divides {num_heads}"
            )
        if num_kv_heads % sp_size and sp_size % num_kv_heads:
            raise ValueError(
                f"sequence_parallel_size={sp_size} and {num_kv_heads} KV heads: neither divides the other; "
                f"use sequence_parallel_mode: auto (which picks {instead} here)"
            )
        return sp_size, 1
    degree = ulysses_degree or default_ulysses_degree(sp_size, num_heads, num_kv_heads)
    if sp_size % degree or num_heads % degree or (num_kv_heads % degree and degree % num_kv_heads):
        raise ValueError(
            f"ulysses_degree={degree} must divide sequence_parallel_size={sp_size} and the {num_heads} heads, "
            f"and divide or be divided by the {num_kv_heads} KV heads; "
            f"try ulysses_degree: {default_ulysses_degree(sp_size, num_heads, num_kv_heads)}"
        )
    return degree, sp_size // degree


def init_sequence_parallel(
    sp_size: int,
    mode: str = "ulysses",
    *,
    num_heads: int,
    num_kv_heads: int,
    ulysses_degree: int | None = None,
    timeout: timedelta | None = None,
) -> SequenceParallelLayout:
    """Create the process groups (every rank must call this, in the same order).

    `timeout` bounds every collective of the groups (the run's `ddp_timeout`): without it new
    groups take torch's 30-minute default, and a rank whose peer hangs waits that long."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if world % sp_size:
        raise ValueError(f"sequence_parallel_size={sp_size} must divide the world size {world}")
    ulysses, ring = resolve_degrees(sp_size, mode, num_heads, num_kv_heads, ulysses_degree)
    groups: dict[str, dist.ProcessGroup | None] = {"sp": None, "dp": None, "ulysses": None, "ring": None}
    if world > 1:
        # new_group is collective over the whole world: every rank creates every group.
        for start in range(0, world, sp_size):
            members = list(range(start, start + sp_size))
            group = dist.new_group(members, timeout=timeout)
            if rank in members:
                groups["sp"] = group
            for r in range(ring):
                uly = members[r * ulysses : (r + 1) * ulysses]
                group = dist.new_group(uly, timeout=timeout)
                if rank in uly:
                    groups["ulysses"] = group
            for u in range(ulysses):
                ring_members = members[u::ulysses]
                group = dist.new_group(ring_members, timeout=timeout)
                if rank in ring_members:
                    groups["ring"] = group
        for offset in range(sp_size):
            members = list(range(offset, world, sp_size))
            group = dist.new_group(members, timeout=timeout)
            if rank in members:
                groups["dp"] = group
    return SequenceParallelLayout(
        world_size=world,
        rank=rank,
        sp_size=sp_size,
        ulysses_size=ulysses,
        ring_size=ring,
        mode=mode,
        sp_group=groups["sp"],
        dp_group=groups["dp"],
        ulysses_group=groups["ulysses"],
        ring_group=groups["ring"],
    )


def destroy_sequence_parallel(layout: SequenceParallelLayout) -> None:
    """Destroy the subgroups this layout created (the default group is the caller's)."""
    seen = set()
    for group in (layout.sp_group, layout.dp_group, layout.ulysses_group, layout.ring_group):
        if group is not None and id(group) not in seen:
            seen.add(id(group))
            dist.destroy_process_group(group)

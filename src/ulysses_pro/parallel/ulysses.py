"""DeepSpeed-Ulysses (Jacobs et al. 2023): all-to-all from sequence shards to head shards and back.

Before attention every rank trades its sequence shard of all heads for the whole (ring-local)
sequence of H/U heads; after attention the inverse all-to-all restores sequence shards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .comm import heads_to_sequence, sequence_to_heads


def replicate_kv_heads(x: torch.Tensor, ulysses_size: int) -> torch.Tensor:
    """GQA with fewer KV heads than ranks: repeat each KV head just enough that every rank gets one."""
    kv_heads = x.shape[1]
    if kv_heads >= ulysses_size:
        if kv_heads % ulysses_size:
            raise ValueError(f"{kv_heads} KV heads cannot be split over ulysses degree {ulysses_size}")
        return x
    if ulysses_size % kv_heads:
        raise ValueError(f"ulysses degree {ulysses_size} is not a multiple of the {kv_heads} KV heads")
    return x.repeat_interleave(ulysses_size // kv_heads, dim=1)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    ulysses_size: int,
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run `attend` on head shards of the gathered sequence; returns (b, H, s_local, d)."""
    if q.shape[1] % ulysses_size:
        raise ValueError(f"{q.shape[1]} query heads cannot be split over ulysses degree {ulysses_size}")
    k, v = replicate_kv_heads(k, ulysses_size), replicate_kv_heads(v, ulysses_size)
    out = attend(heads_to_sequence(q, group), heads_to_sequence(k, group), heads_to_sequence(v, group))
    return sequence_to_heads(out, group)

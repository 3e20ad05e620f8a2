"""Differentiable collectives for sequence parallelism: head/sequence all-to-all, ring exchange."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _group_size(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


def _heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    size = dist.get_world_size(group)
    batch, heads, seq, dim = x.shape
    send = x.reshape(batch, size, heads // size, seq, dim).transpose(0, 1).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    # received[u] is sequence piece u (from rank u) of our head group.
    return received.permute(1, 2, 0, 3, 4).reshape(batch, heads // size, size * seq, dim)


def _sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    size = dist.get_world_size(group)
    batch, heads, seq, dim = x.shape
    send = x.reshape(batch, heads, size, seq // size, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    # received[u] is head group u (from rank u) of our sequence piece.
    return received.transpose(0, 1).reshape(batch, size * heads, seq // size, dim)


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _heads_to_sequence(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _sequence_to_heads(grad.contiguous(), ctx.group), None


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _sequence_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_sequence(grad.contiguous(), ctx.group), None


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """(b, H, s/U, d) sharded by sequence -> (b, H/U, s, d) sharded by heads; backward is the inverse."""
    if _group_size(group) == 1:
        return x
    if x.shape[1] % _group_size(group):
        raise ValueError(f"{x.shape[1]} heads cannot be scattered over {_group_size(group)} ranks")
    return _HeadsToSequence.apply(x, group)


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """(b, H/U, s, d) sharded by heads -> (b, H, s/U, d) sharded by sequence; backward is the inverse."""
    if _group_size(group) == 1:
        return x
    return _SequenceToHeads.apply(x, group)


def all_gather_sequence(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate (b, s_local) integer metadata of every rank along dim 1 (no autograd)."""
    size = _group_size(group)
    if size == 1:
        return x
    pieces = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(pieces, x.contiguous(), group=group)
    return torch.cat(pieces, dim=1)


def ring_shift(tensors: list[torch.Tensor], send_to: int, receive_from: int, group) -> list[torch.Tensor]:
    """Send each tensor to global rank `send_to` and receive same-shaped ones from `receive_from`."""
    received = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]
    ops = []
    for tensor, buffer in zip(tensors, received):
        ops.append(dist.P2POp(dist.isend, tensor.contiguous(), send_to, group))
        ops.append(dist.P2POp(dist.irecv, buffer, receive_from, group))
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received

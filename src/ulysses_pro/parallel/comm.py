"""Differentiable collectives for sequence parallelism: head/sequence all-to-all, ring exchange."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _group_size(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


def _heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    size = dist.get_world_size(group)
    batch, heads, seq, dim = x.shape
    # One copy into the send buffer: chunk u holds head group u of our sequence piece.
    send = x.transpose(1, 2).reshape(batch, seq, size, heads // size, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    # received[u] is sequence piece u (from rank u) of our head group; the result is laid out
    # sequence-major, (b, s, h, d) in memory, which the flash kernels read without a copy.
    gathered = received.permute(1, 0, 2, 3, 4).reshape(batch, size * seq, heads // size, dim)
    return gathered.transpose(1, 2)


def _sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    size = dist.get_world_size(group)
    batch, heads, seq, dim = x.shape
    send = x.transpose(1, 2).reshape(batch, size, seq // size, heads, dim).transpose(0, 1).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    # received[u] is head group u (from rank u) of our sequence piece.
    scattered = received.permute(1, 2, 0, 3, 4).reshape(batch, seq // size, size * heads, dim)
    return scattered.transpose(1, 2)


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _heads_to_sequence(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _sequence_to_heads(grad, ctx.group), None


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _sequence_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_sequence(grad, ctx.group), None


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


class _GatherRows(torch.autograd.Function):
    """Every rank's (n_r, d) rows, concatenated in rank order; n_r may differ per rank. Backward:
    each rank's rows feed every rank's loss, so their gradient is the sum over ranks (an all-reduce
    of the whole gradient, of which each rank keeps its own rows)."""

    @staticmethod
    def forward(ctx, x, group):
        size = dist.get_world_size(group)
        counts = torch.tensor([x.shape[0]], device=x.device)
        all_counts = [torch.empty_like(counts) for _ in range(size)]
        dist.all_gather(all_counts, counts, group=group)
        counts_list = [int(c) for c in all_counts]
        padded = x.new_zeros((max(counts_list), *x.shape[1:]))
        padded[: x.shape[0]] = x
        pieces = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        ctx.group, ctx.counts, ctx.rank = group, counts_list, dist.get_rank(group)
        return torch.cat([piece[:count] for piece, count in zip(pieces, counts_list)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]], None


def gather_rows(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable all-gather of a variable number of rows per rank (see `_GatherRows`)."""
    if _group_size(group) == 1:
        return x
    return _GatherRows.apply(x, group)


class PendingShift:
    """Posted ring sends/receives; `wait()` returns the received tensors."""

    def __init__(self, requests, received: list[torch.Tensor], sent: list[torch.Tensor]):
        self._requests, self._received = requests, received
        self._sent = sent  # kept alive until the sends complete

    def wait(self) -> list[torch.Tensor]:
        for request in self._requests:
            request.wait()
        self._sent = []
        return [_from_wire(buffer) for buffer in self._received]


def _to_wire(t: torch.Tensor) -> torch.Tensor:
    """Contiguous buffer to send: 4-D attention tensors (b, h, s, d) travel sequence-major."""
    return t.transpose(1, 2).contiguous() if t.dim() == 4 else t.contiguous()


def _from_wire(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2) if t.dim() == 4 else t


def start_ring_shift(tensors: list[torch.Tensor], send_to: int, receive_from: int, group) -> PendingShift:
    """Post sends of each tensor to global rank `send_to` and receives of same-shaped ones from
    `receive_from`; compute can run until `wait()`. Every rank must post the same sequence of shifts."""
    sent = [_to_wire(t) for t in tensors]
    received = [torch.empty_like(t) for t in sent]
    ops = []
    for tensor, buffer in zip(sent, received):
        ops.append(dist.P2POp(dist.isend, tensor, send_to, group))
        ops.append(dist.P2POp(dist.irecv, buffer, receive_from, group))
    return PendingShift(dist.batch_isend_irecv(ops), received, sent)


def ring_shift(tensors: list[torch.Tensor], send_to: int, receive_from: int, group) -> list[torch.Tensor]:
    """Send each tensor to global rank `send_to` and receive same-shaped ones from `receive_from`."""
    return start_ring_shift(tensors, send_to, receive_from, group).wait()


def broadcast_from_group_leader(objects: list, group: dist.ProcessGroup | None) -> list:
    """The group's rank-0 copy of a list of picklable objects, on every rank of `group` (in place).
    Once per optimizer step (RL rollouts), never per layer: it syncs the host."""
    if group is None or _group_size(group) == 1:
        return objects
    dist.broadcast_object_list(objects, src=dist.get_global_rank(group, 0), group=group)
    return objects

"""Token-weighted loss reductions (DESIGN contract 6).

Each rank back-propagates `sum(local token losses) / N_global * W`: `N_global` counts the valid
(shifted) targets of every micro-batch of the optimizer step on every rank, and `W` is the number of
ranks whose gradients the engine averages. The gradient then equals that of the mean token loss of
the whole global batch, however it is split across gradient accumulation and ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

IGNORE_INDEX = -100


def count_targets(shift_labels: torch.Tensor) -> torch.Tensor:
    """Number of positions that have a target."""
    return shift_labels.ne(IGNORE_INDEX).sum()


def global_sum(value: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum a count over all ranks of `group` (no autograd: counts carry no gradient)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value


def normalized_token_loss(
    loss_sum: torch.Tensor, global_count: torch.Tensor | int, gradient_average_world: int
) -> torch.Tensor:
    """`loss_sum / N_global * W`; a step with no target at all contributes zero, not NaN."""
    count = torch.as_tensor(global_count, device=loss_sum.device, dtype=loss_sum.dtype).clamp(min=1)
    return loss_sum / count * gradient_average_world


def reduce_sequence_parallel_loss(
    local_loss_sum: torch.Tensor,
    local_token_count: torch.Tensor | int,
    group: dist.ProcessGroup | None = None,
    gradient_average_world: int = 1,
) -> torch.Tensor:
    """Token-mean loss of a sequence split over `group`, differentiable in the local part.

    Every rank returns `local_sum / N_group * W`; summed over the group that is the mean over all
    its tokens (times W), and back-propagating it on each rank gives each rank the gradient of its
    own tokens' share: with DDP averaging over W ranks the result is exact (contract 6).
    """
    count = torch.as_tensor(local_token_count, device=local_loss_sum.device)
    return normalized_token_loss(local_loss_sum, global_sum(count, group), gradient_average_world)


class _SumOverGroup(torch.autograd.Function):
    """All-reduce SUM forward, identity backward (DESIGN contract 7)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, group):
        total = value.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def sum_over_sequence_parallel(value: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Per-sequence quantities (log-prob sums, token counts, rewards) summed over the SP group.

    Every rank gets the whole-sequence value, so any nonlinearity applied afterwards (a DPO
    sigmoid, say) is the same on every rank; the backward is the identity, so each rank's
    gradient is that of its own tokens' contribution. With the engine averaging over all W ranks,
    each rank back-propagates `W * loss` (contract 7).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
        return value
    return _SumOverGroup.apply(value, group)


class RunningMean:
    """The mean of every value seen so far, the same on every rank: each update adds one value per
    rank of `group` (the DP group), so the result does not depend on how the global batch was
    split. This is the running mean of TRL's `RunningMoments`, which LLaMA-Factory's BCO term uses
    as its reward shift; kept on the device, so an update never waits for the host."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.total: torch.Tensor | None = None  # [sum of values, number of values], float64

    def update(self, value: torch.Tensor) -> torch.Tensor:
        """Add this rank's scalar `value` (and every other rank's); return the new mean, detached."""
        value = value.detach()
        step = torch.stack(
            [value.to(torch.float64), torch.ones((), dtype=torch.float64, device=value.device)]
        )
        step = global_sum(step, self.group)
        self.total = step if self.total is None else self.total.to(step.device) + step
        return self.current(value)

    def current(self, fallback: torch.Tensor) -> torch.Tensor:
        """The mean so far without adding a value (`fallback` before the first update)."""
        if self.total is None:
            return fallback.detach()
        return (self.total[0] / self.total[1]).to(device=fallback.device, dtype=fallback.dtype)

    def state_dict(self) -> dict:
        return {"total": None if self.total is None else self.total.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.total = state["total"]

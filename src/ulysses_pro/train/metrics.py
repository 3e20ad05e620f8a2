"""Means logged by the trainers, reduced over every rank once per log line (not once per step)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class SequenceMetrics:
    """Means of recorded values (rewards, log-probs, evaluation losses) since the last read, over all ranks.

    Sums and counts stay on the device, so recording never waits for the GPU; one all-reduce per
    read. Values that every SP rank holds identically (per-sequence rewards and losses) are
    counted P times in both the sum and the count, so the duplicates cancel in sum / count.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device  # where the all-reduce runs (NCCL needs CUDA tensors)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor | int] = {}

    def record(self, name: str, values: torch.Tensor) -> None:
        """Add every element of `values` to the mean of `name`."""
        values = values.detach().double().reshape(-1)
        self.add(name, values.sum(), values.numel())

    def add(self, name: str, total: torch.Tensor, count: torch.Tensor | int) -> None:
        """Add `count` items whose values sum to `total` (e.g. a batch's summed token losses)."""
        self.sums[name] = self.sums.get(name, 0.0) + total.detach().double().reshape(())
        self.counts[name] = self.counts.get(name, 0) + count

    def muted(self) -> _Muted:
        """A recorder that names values without counting them (padding batches): every rank must
        all-reduce the same names, and a rank with only padding batches still has them."""
        return _Muted(self)

    def metrics(self) -> dict[str, float]:
        """The means since the last call, over all ranks; names without any count are left out."""
        names = sorted(self.sums)
        rows = [
            torch.stack(
                [
                    torch.as_tensor(self.sums[n], dtype=torch.float64).to(self.device).reshape(()),
                    torch.as_tensor(self.counts[n], dtype=torch.float64).to(self.device).reshape(()),
                ]
            )
            for n in names
        ]
        totals = torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        self.sums, self.counts = {}, {}
        means = {n: float(s / c) for n, (s, c) in zip(names, totals.tolist()) if c > 0}
        if "rewards/chosen" in means and "rewards/rejected" in means and "rewards/margins" not in means:
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        return means


class _Muted:
    def __init__(self, target: SequenceMetrics) -> None:
        self.target = target

    def record(self, name: str, values: torch.Tensor) -> None:
        # Zero total and zero count: the values themselves (NaN on padding rows) never enter.
        self.target.add(name, torch.zeros((), dtype=torch.float64, device=values.device), 0)

"""The description of one kernel call: which query rows attend to which key rows (varlen).

A call covers `b` batch rows of `sq` queries and `sk` keys. Flattened row-major, the queries
[q_bounds[i], q_bounds[i+1]) attend to the keys [k_bounds[i], k_bounds[i+1]) and to nothing else
(the flash-attention "varlen" convention, Dao 2023). `uniform` marks the common case of one
problem per batch row spanning the whole row, which loop backends run as one batched call.

Bounds are kept twice: as host tuples (the CPU and reference backends slice with them, so they
never read a device tensor) and as int32 device tensors (the CUDA varlen kernels read those). Both
are built once per forward by `parallel.plan`, so no layer ever syncs the host for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sequences:
    """Independent attention problems of one kernel call over flattened (batch x length) tokens."""

    q_bounds: tuple[int, ...]
    k_bounds: tuple[int, ...]
    uniform: bool
    cu_q: torch.Tensor = field(repr=False)
    cu_k: torch.Tensor = field(repr=False)
    max_q: int = 0
    max_k: int = 0

    @classmethod
    def build(
        cls, q_bounds: list[int], k_bounds: list[int], *, uniform: bool, device: torch.device
    ) -> Sequences:
        """Bounds on the host plus their device copies (int32, as the flash kernels want them)."""
        if len(q_bounds) != len(k_bounds) or len(q_bounds) < 2:
            raise ValueError("query and key bounds must describe the same number (>= 1) of problems")
        q_sizes = [b - a for a, b in zip(q_bounds[:-1], q_bounds[1:])]
        k_sizes = [b - a for a, b in zip(k_bounds[:-1], k_bounds[1:])]
        return cls(
            tuple(q_bounds),
            tuple(k_bounds),
            uniform,
            _device_bounds(q_bounds, device),
            _device_bounds(k_bounds, device),
            max(q_sizes),
            max(k_sizes),
        )

    @classmethod
    def rows(cls, batch: int, queries: int, keys: int, device: torch.device) -> Sequences:
        """One problem per batch row: all `queries` of a row attend to its `keys`."""
        return cls.build(
            [row * queries for row in range(batch + 1)],
            [row * keys for row in range(batch + 1)],
            uniform=True,
            device=device,
        )

    @property
    def count(self) -> int:
        return len(self.q_bounds) - 1

    def problems(self, queries: int, keys: int) -> Iterator[tuple[int, slice, slice]]:
        """(batch row, query slice, key slice) of every problem, in row-local positions."""
        for index in range(self.count):
            qa, qb = self.q_bounds[index], self.q_bounds[index + 1]
            ka, kb = self.k_bounds[index], self.k_bounds[index + 1]
            row = qa // queries
            yield row, slice(qa - row * queries, qb - row * queries), slice(ka - row * keys, kb - row * keys)


def _device_bounds(bounds: list[int], device: torch.device) -> torch.Tensor:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        # Pinned memory lets the copy run asynchronously instead of waiting for the GPU queue.
        host = torch.tensor(bounds, dtype=torch.int32, device="cpu").pin_memory()
        return host.to(device, non_blocking=True)
    return torch.tensor(bounds, dtype=torch.int32, device=device)

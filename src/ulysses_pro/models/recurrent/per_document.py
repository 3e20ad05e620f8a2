"""Run a sequence function document by document: the reference way to restart a recurrence.

`fn(*tensors)` maps (b, S, ...) tensors to a (b, S, ...) output along the sequence (a delta rule, a
selective scan). A row with one document is run as is (all such rows in one call); a packed row is
cut at its document starts and each document runs from a zero state, which is what the model
computes for that document alone. Kernels that take `cu_seqlens` do the same in one launch; this
is the path every device has.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .documents import MixerContext


def run_per_document(
    fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor], context: MixerContext
) -> torch.Tensor:
    """`fn` over every document of every row, outputs laid back in place."""
    if context.one_document_per_row:
        return fn(*tensors)
    rows = []
    for row in range(tensors[0].shape[0]):
        pieces = [
            fn(*(t[row : row + 1, start:stop] for t in tensors)) for start, stop in context.documents(row)
        ]
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0)

"""Pad once, then split a batch along the sequence (DESIGN contracts 2 and 3).

Labels arrive already shifted over the whole sequence, so splitting never loses a target at a
shard boundary. Each shard keeps the global position ids of its tokens (restarting per packed
document), so rotary embeddings are the same as without sequence parallelism.
"""

from __future__ import annotations

import torch

from .mesh import SequenceParallelLayout
from .reduce import IGNORE_INDEX


def padded_length(length: int, unit: int) -> int:
    """Smallest multiple of `unit` that is >= length."""
    return -(-length // unit) * unit


def shard_indices(
    length: int, ulysses_size: int, ring_size: int, ulysses_rank: int, ring_rank: int
) -> torch.Tensor:
    """Global token indices held by one rank (length must be a multiple of the split unit).

    Ring (zigzag): the sequence is cut into 2R chunks and ring rank r holds chunks r and 2R-1-r,
    which balances causal work. Ulysses then splits that ring-local sequence contiguously.
    """
    if ring_size > 1:
        chunk = length // (2 * ring_size)
        first = torch.arange(ring_rank * chunk, (ring_rank + 1) * chunk)
        second_start = (2 * ring_size - 1 - ring_rank) * chunk
        ring_local = torch.cat([first, torch.arange(second_start, second_start + chunk)])
    else:
        ring_local = torch.arange(length)
    piece = ring_local.numel() // ulysses_size
    return ring_local[ulysses_rank * piece : (ulysses_rank + 1) * piece]


def pad_for_sequence_parallel(
    batch: dict[str, torch.Tensor], unit: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Pad every (b, s) tensor at the end of the row to a multiple of `unit`.

    Padding has no target, and its position ids restart at 0, so it forms its own segment and no
    real token attends to it.
    """
    length = batch["input_ids"].shape[1]
    extra = padded_length(length, unit) - length
    if extra == 0:
        return dict(batch)
    fill = {"input_ids": pad_token_id, "shift_labels": IGNORE_INDEX}  # any other per-token tensor: 0
    out = {}
    for key, tensor in batch.items():
        if tensor.dim() < 2 or tensor.shape[1] != length:
            out[key] = tensor  # per-row values (labels of whole sequences) are not split
        elif key == "position_ids":
            tail = torch.arange(extra, dtype=tensor.dtype).expand(tensor.shape[0], extra)
            out[key] = torch.cat([tensor, tail], dim=1)
        else:
            tail = torch.full((tensor.shape[0], extra), fill.get(key, 0), dtype=tensor.dtype)
            out[key] = torch.cat([tensor, tail], dim=1)
    return out


def split_for_sequence_parallel(
    batch: dict[str, torch.Tensor], ulysses_size: int, ring_size: int, ulysses_rank: int, ring_rank: int
) -> dict[str, torch.Tensor]:
    """Keep this rank's tokens of every (b, s) tensor (the batch must already be padded)."""
    length = batch["input_ids"].shape[1]
    index = shard_indices(length, ulysses_size, ring_size, ulysses_rank, ring_rank)
    return {
        key: tensor.index_select(1, index) if tensor.dim() >= 2 and tensor.shape[1] == length else tensor
        for key, tensor in batch.items()
    }


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document number of every token: a new document starts wherever positions do not step by 1."""
    step = position_ids[:, 1:] - position_ids[:, :-1]
    starts = torch.cat([torch.zeros_like(position_ids[:, :1]), (step != 1).long()], dim=1)
    return starts.cumsum(dim=1)


class SequenceParallelCollator:
    """Wraps a padding collator: pad the batch once to the split unit, keep this rank's shard.

    The attention mask is dropped: masking under SP comes from the position ids alone (right
    padding is causal-invisible to real tokens and forms its own segment).
    """

    def __init__(self, collate, pad_token_id: int, layout: SequenceParallelLayout):
        self.collate, self.pad_token_id, self.layout = collate, pad_token_id, layout

    def __call__(self, rows) -> dict[str, torch.Tensor]:
        batch = self.collate(rows)
        batch.pop("attention_mask", None)
        layout = self.layout
        batch = pad_for_sequence_parallel(batch, layout.split_unit, self.pad_token_id)
        return split_for_sequence_parallel(
            batch, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
        )

"""Pad once, then split a batch along the sequence (DESIGN contracts 2 and 3).

Labels arrive already shifted over the whole sequence, so splitting never loses a target at a
shard boundary. Each shard keeps the global position ids of its tokens (restarting per packed
document), so rotary embeddings are the same as without sequence parallelism.
"""

from __future__ import annotations

import torch

from .comm import all_gather_sequence
from .mesh import SequenceParallelLayout
from .reduce import IGNORE_INDEX


def padded_length(length: int, unit: int) -> int:
    """Smallest multiple of `unit` that is >= length."""
    return -(-length // unit) * unit


def ring_runs(length: int, ring_size: int, ring_rank: int) -> list[tuple[int, int]]:
    """Global [start, stop) token runs of one ring rank's ring-local sequence, in local order.

    Zigzag: the sequence is cut into 2R chunks and ring rank r holds chunks r and 2R-1-r, which
    balances causal work (no ring: one run, the whole sequence).
    """
    if ring_size == 1:
        return [(0, length)]
    chunk = length // (2 * ring_size)
    second = 2 * ring_size - 1 - ring_rank
    return [(ring_rank * chunk, (ring_rank + 1) * chunk), (second * chunk, (second + 1) * chunk)]


def shard_runs(
    length: int, ulysses_size: int, ring_size: int, ulysses_rank: int, ring_rank: int
) -> list[tuple[int, int]]:
    """Global [start, stop) runs one rank holds: its ulysses piece of its ring rank's sequence."""
    runs = ring_runs(length, ring_size, ring_rank)
    piece = sum(stop - start for start, stop in runs) // ulysses_size
    first, last = ulysses_rank * piece, (ulysses_rank + 1) * piece
    held, offset = [], 0
    for start, stop in runs:
        lo, hi = max(first, offset), min(last, offset + stop - start)
        if lo < hi:
            held.append((start + lo - offset, start + hi - offset))
        offset += stop - start
    return held


def shard_indices(
    length: int,
    ulysses_size: int,
    ring_size: int,
    ulysses_rank: int,
    ring_rank: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Global token indices held by one rank, on `device` (length must be a multiple of the split unit)."""
    runs = shard_runs(length, ulysses_size, ring_size, ulysses_rank, ring_rank)
    return torch.cat([torch.arange(start, stop, device=device) for start, stop in runs])


# Batch entries that are not per token even when a dimension happens to equal the sequence length:
# vision patches (patches, C x T x P x P) and grids. The vision tower shares them out by item.
WHOLE_ITEMS = frozenset({"pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw"})
# Per-token entries whose padding is not 0: no target, and no visual feature.
PAD_FILL = {"shift_labels": IGNORE_INDEX, "image_feature_index": -1, "video_feature_index": -1}


def _per_token(key: str, tensor: torch.Tensor, length: int) -> bool:
    return key not in WHOLE_ITEMS and tensor.dim() >= 2 and tensor.shape[1] == length


def pad_for_sequence_parallel(
    batch: dict[str, torch.Tensor], unit: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Pad every (b, s) tensor at the end of the row to a multiple of `unit`.

    Padding has no target and comes last, so under causal attention no real token sees it; its
    position ids continue the row's last document, so a padded row stays one attention problem
    instead of gaining a segment (the extra pad tokens attend into that document, harmlessly).
    """
    length = batch["input_ids"].shape[1]
    extra = padded_length(length, unit) - length
    if extra == 0:
        return dict(batch)
    fill = {**PAD_FILL, "input_ids": pad_token_id}  # any other per-token tensor: 0
    out = {}
    for key, tensor in batch.items():
        if not _per_token(key, tensor, length):
            out[key] = tensor  # per-row values (labels of whole sequences) and media are not split
        elif key == "position_ids":
            step = torch.arange(1, extra + 1, dtype=tensor.dtype, device=tensor.device)
            tail = tensor[:, -1:] + step
            out[key] = torch.cat([tensor, tail], dim=1)
        else:
            tail = torch.full(
                (tensor.shape[0], extra, *tensor.shape[2:]),
                fill.get(key, 0),
                dtype=tensor.dtype,
                device=tensor.device,
            )
            out[key] = torch.cat([tensor, tail], dim=1)
    return out


def split_for_sequence_parallel(
    batch: dict[str, torch.Tensor], ulysses_size: int, ring_size: int, ulysses_rank: int, ring_rank: int
) -> dict[str, torch.Tensor]:
    """Keep this rank's tokens of every (b, s) tensor (the batch must already be padded)."""
    length = batch["input_ids"].shape[1]
    device = batch["input_ids"].device
    index = shard_indices(length, ulysses_size, ring_size, ulysses_rank, ring_rank, device=device)
    return {
        key: tensor.index_select(1, index) if _per_token(key, tensor, length) else tensor
        for key, tensor in batch.items()
    }


class SequenceParallelCollator:
    """Wraps a padding collator: pad the batch once to the split unit, keep this rank's shard.

    The attention mask is dropped: masking under SP comes from the position ids alone (right
    padding is causal-invisible to real tokens and has no target).
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


def gather_full_sequence(local: torch.Tensor, layout: SequenceParallelLayout) -> torch.Tensor:
    """The inverse of the split: (b, S) in global token order from every SP rank's (b, S / P) shard.
    No autograd; for per-token scalars (positions, log-probs, values), never for hidden states."""
    if layout.sp_size == 1:
        return local
    gathered = all_gather_sequence(local, layout.sp_group)  # (b, S) in sp-rank order
    width = local.shape[1]
    length = width * layout.sp_size
    pieces = []
    for sp_rank in range(layout.sp_size):
        runs = shard_runs(
            length,
            layout.ulysses_size,
            layout.ring_size,
            sp_rank % layout.ulysses_size,
            sp_rank // layout.ulysses_size,
        )
        offset = sp_rank * width
        for start, stop in runs:
            pieces.append((start, gathered[:, offset : offset + stop - start]))
            offset += stop - start
    return torch.cat([piece for _, piece in sorted(pieces, key=lambda item: item[0])], dim=1)

"""Batches of rows with images and videos, for a vision-language model under any SP size.

On top of the padded text batch it adds, for the whole (unsplit) sequence:
- `vision_position_ids` (b, s, 3): M-RoPE's temporal/height/width positions, computed per packed
  document by the model's own rule (`positions`), so a packed document gets the positions it would
  get alone; split with the tokens, like `position_ids` (which stay the 1-D text positions that
  restart per document: attention reads the document boundaries from them);
- `image_feature_index` / `video_feature_index` (b, s): at each visual token, the row of its
  feature in the batch's features (images in order, row by row), -1 elsewhere; after the split each
  shard knows which features its own visual tokens take;
- the grids of every image and video of the batch, and the pixels of only the images and video
  frame groups this rank's vision tower encodes (`parallel.work_split` over the ranks sharing the
  samples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...parallel.work_split import owners, time_pieces
from .pixels import PixelReader
from .qwen_vl import VisualInput
from .rows import MEDIA_KINDS

# (document ids, image grids, video grids, video seconds per temporal patch) -> (3, len) positions
PositionRule = Callable[[list[int], list, list, list], torch.Tensor]


def _runs(ids: list[int], token: int) -> int:
    """How many separate runs of `token` the ids hold."""
    return sum(1 for i, t in enumerate(ids) if t == token and (i == 0 or ids[i - 1] != token))


def _taken(items: list[VisualInput], runs: int) -> list[VisualInput]:
    """The first items that make `runs` runs of pad tokens (an image one, a timed video one per
    temporal patch)."""
    count = total = 0
    while total < runs and count < len(items):
        total += items[count].token_runs
        count += 1
    return items[:count]


@dataclass
class _Sequence:
    """One row of the padded batch: its ids, packed documents and media."""

    input_ids: list[int]
    document_lengths: list[int] | None
    images: list[VisualInput]
    videos: list[VisualInput]


def _sequences(rows: list[dict], media: list[tuple]) -> list[_Sequence]:
    """The batch's rows in the inner collator's order: a preference batch holds every pair's chosen
    sequence, then every rejected one, both with the pair's media."""
    if "chosen_input_ids" in rows[0]:
        return [
            _Sequence(row[f"{side}_input_ids"], None, images, videos)
            for side in ("chosen", "rejected")
            for row, (images, videos) in zip(rows, media)
        ]
    return [
        _Sequence(row["input_ids"], row.get("document_lengths"), images, videos)
        for row, (images, videos) in zip(rows, media)
    ]


@dataclass
class VisionCollator:
    """Wraps a text collator (`PaddingCollator`, `PairwiseCollator`); see the module docstring."""

    inner: Callable
    pixels: PixelReader
    positions: PositionRule
    image_token_id: int
    video_token_id: int
    share: tuple[int, int] = (0, 1)  # (this rank, ranks) among those holding the same samples

    @property
    def pad_token_id(self) -> int:
        return self.inner.pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rows = [dict(row) for row in rows]
        media = [tuple(row.pop(kind, []) for kind in MEDIA_KINDS) for row in rows]
        batch = self.inner(rows)
        sequences = _sequences(rows, media)
        batch["vision_position_ids"] = self._vision_positions(sequences, batch["input_ids"].shape[1])
        for key, token in (("image", self.image_token_id), ("video", self.video_token_id)):
            at = batch["input_ids"] == token
            index = torch.cumsum(at.flatten(), 0).view_as(at) - 1
            batch[f"{key}_feature_index"] = torch.where(at, index, torch.full_like(index, -1))
        images = [item for sequence in sequences for item in sequence.images]
        videos = [item for sequence in sequences for item in sequence.videos]
        batch.update(self._media(images, videos))
        return batch

    def _vision_positions(self, sequences: list[_Sequence], width: int) -> torch.Tensor:
        out = torch.zeros(len(sequences), width, 3, dtype=torch.long)
        for index, sequence in enumerate(sequences):
            ids, images, videos = sequence.input_ids, sequence.images, sequence.videos
            start = used_images = used_videos = 0
            for length in sequence.document_lengths or [len(ids)]:
                document = ids[start : start + length]
                taken_images = _taken(images[used_images:], _runs(document, self.image_token_id))
                taken_videos = _taken(videos[used_videos:], _runs(document, self.video_token_id))
                used_images, used_videos = used_images + len(taken_images), used_videos + len(taken_videos)
                positions = self.positions(
                    document,
                    [item.grid for item in taken_images],
                    [item.grid for item in taken_videos],
                    [item.seconds_per_grid for item in taken_videos],
                )
                out[index, start : start + length] = positions.T
                start += length
            # Padding: text positions running on (no real token sees them; they only keep the shape).
            if start < width:
                last = out[index, start - 1].max() if start else -1
                out[index, start:] = (last + 1 + torch.arange(width - start)).unsqueeze(-1)
        return out

    def _media(self, images: list[VisualInput], videos: list[VisualInput]) -> dict[str, torch.Tensor]:
        items = images + videos
        rank, ranks = self.share
        pieces = time_pieces([item.grid for item in items])
        owner = owners([h * w for _, _, h, w in pieces], ranks)
        # This rank's temporal groups of each item, in order (an item is read once for all of them).
        mine: dict[int, list[int]] = {}
        for (item, group, _, _), owning in zip(pieces, owner):
            if owning == rank:
                mine.setdefault(item, []).append(group)
        out = {
            "image_grid_thw": torch.tensor([item.grid for item in images], dtype=torch.long).view(-1, 3),
            "video_grid_thw": torch.tensor([item.grid for item in videos], dtype=torch.long).view(-1, 3),
            "second_per_grid_ts": torch.tensor([item.seconds_per_grid for item in videos]),
        }
        patch_width = 3 * self.pixels.image_geometry.temporal_patch_size * self.pixels.image_geometry.patch_size**2
        for key, kind in (("pixel_values", "image"), ("pixel_values_videos", "video")):
            read = [self.pixels.pixels(items[i], groups) for i, groups in mine.items() if items[i].kind == kind]
            out[key] = torch.cat(read) if read else torch.zeros(0, patch_width)
        return out

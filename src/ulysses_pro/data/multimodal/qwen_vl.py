"""Qwen2-VL / Qwen2.5-VL: how many visual tokens each image and video becomes, and the expanded text.

The rules are LLaMA-Factory's (`data/mm_plugin.py`, `Qwen2VLPlugin`, at the commit of its demo data,
ff6d4d12), on top of transformers' Qwen2-VL processor:
- an image is first resized to at most `image_max_pixels` (768 x 768) and at least
  `image_min_pixels` (32 x 32) pixels, keeping its aspect (sides truncated to integers); then each
  side to at least 28, and an aspect beyond 200:1 cut to 180:1;
- the processor resizes it to multiples of patch x merge (`smart_resize`, 14 x 2 = 28) within its
  own pixel bounds and cuts it into patch x patch patches: grid (t, h, w) = (1, H / 14, W / 14);
- video frames get the same first step with `video_max_pixels` (256 x 256) / `video_min_pixels`
  (16 x 16), are sampled as `media.sample_indices` says, padded to an even count (the temporal patch
  is 2 frames), and resized within the *video* processor's pixel bounds (its own defaults: 128 x 28
  x 28 to 768 x 28 x 28): grid (frames / 2, H / 14, W / 14), computed from the stream's size as
  LLaMA-Factory's `_get_qwen_video_grid_metadata` does, without decoding;
- a placeholder becomes `<|vision_start|>` + `<|image_pad|>` (or `<|video_pad|>`) x (t h w / merge^2)
  + `<|vision_end|>`.

Qwen3-VL and Qwen3.5 (LLaMA-Factory's `Qwen3VLPlugin`) differ for videos only: the frames count in
the video processor's pixel bounds (transformers' Qwen3-VL video `smart_resize` over frames x height
x width), and each temporal patch is written on its own, preceded by its time:
`<{t:.1f} seconds>` + `<|vision_start|>` + `<|video_pad|>` x (h w / merge^2) + `<|vision_end|>`, with
t the mean time of the patch's two frames (sampled frame index / the stream's average frame rate;
the last frame repeated to pair it, as transformers' `Qwen3VLProcessor._calculate_timestamps`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, RowRef
from .media import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, open_image, sample_indices, video_stream

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_TOKEN, VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"


@dataclass(frozen=True)
class VisionLimits:
    """LLaMA-Factory's keys for media size and sampling (their defaults live with the config keys,
    `config.args.DataArguments`)."""

    image_max_pixels: int
    image_min_pixels: int
    video_max_pixels: int
    video_min_pixels: int
    video_fps: float
    video_maxlen: int

    @classmethod
    def of(cls, data_args) -> VisionLimits:
        return cls(**{name: getattr(data_args, name) for name in cls.__dataclass_fields__})


def regularized_size(width: int, height: int, max_pixels: int, min_pixels: int) -> tuple[int, int]:
    """The (width, height) LLaMA-Factory resizes an image or a video frame to before the processor."""
    if width * height > max_pixels:
        factor = math.sqrt(max_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
    if width * height < min_pixels:
        factor = math.sqrt(min_pixels / (width * height))
        width, height = int(width * factor), int(height * factor)
    if min(width, height) < 28:
        width, height = max(width, 28), max(height, 28)
    if width / height > 200:
        width, height = height * 180, height
    if height / width > 200:
        width, height = width, width * 180
    return width, height


def regularize_image(image, max_pixels: int, min_pixels: int):
    """The image resized as `regularized_size` says (PIL's default filter, as LLaMA-Factory), in RGB."""
    size = regularized_size(image.width, image.height, max_pixels, min_pixels)
    if size != (image.width, image.height):
        image = image.resize(size)
    return image.convert("RGB") if image.mode != "RGB" else image


@dataclass(frozen=True)
class ProcessorGeometry:
    """What the token count needs from a Qwen2-VL image processor."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    # Qwen3-VL's video processor: frames count in the pixel bounds; each temporal patch is written
    # with its timestamp.
    timed_frames: bool = False

    @classmethod
    def of(cls, image_processor) -> ProcessorGeometry:
        size = image_processor.size
        get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
        return cls(
            patch_size=image_processor.patch_size,
            merge_size=image_processor.merge_size,
            temporal_patch_size=image_processor.temporal_patch_size,
            min_pixels=get("shortest_edge") or cls.min_pixels,
            max_pixels=get("longest_edge") or cls.max_pixels,
        )

    @classmethod
    def video_defaults(cls) -> ProcessorGeometry:
        """transformers' `Qwen2VLVideoProcessor` class defaults (its pixel bounds differ from the
        image processor's)."""
        return cls(min_pixels=128 * 28 * 28, max_pixels=28 * 28 * 768)

    @classmethod
    def qwen3_video_defaults(cls) -> ProcessorGeometry:
        """transformers' `Qwen3VLVideoProcessor` class defaults."""
        return cls(patch_size=16, min_pixels=128 * 32 * 32, max_pixels=32 * 32 * 768, timed_frames=True)

    def grid(self, width: int, height: int, frames: int = 1) -> tuple[int, int, int]:
        factor = self.patch_size * self.merge_size
        if self.timed_frames:
            from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as video_resize

            resized_height, resized_width = video_resize(
                frames,
                height,
                width,
                temporal_factor=self.temporal_patch_size,
                factor=factor,
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
            )
        else:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

            resized_height, resized_width = smart_resize(
                height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
            )
        return (
            math.ceil(frames / self.temporal_patch_size),
            resized_height // self.patch_size,
            resized_width // self.patch_size,
        )

    def tokens(self, grid: Sequence[int]) -> int:
        return math.prod(grid) // self.merge_size**2


@dataclass(frozen=True)
class VisualInput:
    """One image or video of a row, as encoding decided it: the file, LLaMA-Factory's resize, the
    processor grid (t, h, w) and, for a video, the sampled frames and the seconds one temporal
    patch spans (M-RoPE spaces video positions by it). Pixels are read from this when a batch is
    built, so rows hold paths and numbers, never pixels."""

    kind: str  # "image" or "video"
    path: str
    size: tuple[int, int]  # (width, height) after LLaMA-Factory's resize, before the processor's
    grid: tuple[int, int, int]
    frames: tuple[int, ...] = ()
    seconds_per_grid: float = 0.0
    timestamps: tuple[float, ...] = ()  # Qwen3-VL: each temporal patch's time, written before it

    @property
    def token_runs(self) -> int:
        """Separate runs of pad tokens it becomes in the text (a timed video: one per temporal patch)."""
        return self.grid[0] if self.timestamps else 1


def image_input(path: Path, geometry: ProcessorGeometry, limits: VisionLimits, row: RowRef) -> VisualInput:
    image = open_image(path, row)
    size = regularized_size(image.width, image.height, limits.image_max_pixels, limits.image_min_pixels)
    return VisualInput("image", str(path), size, geometry.grid(*size))


def video_input(path: Path, geometry: ProcessorGeometry, limits: VisionLimits, row: RowRef) -> VisualInput:
    stream = video_stream(path, row)
    indices = sample_indices(stream, limits.video_fps, limits.video_maxlen)
    frames = len(indices) + len(indices) % 2  # the last frame repeated: the temporal patch takes two
    size = regularized_size(stream.width, stream.height, limits.video_max_pixels, limits.video_min_pixels)
    # LLaMA-Factory's fps of the sampled frames (`_regularize_videos`): frames per second of the
    # stream's duration, or `video_fps` when the container states none.
    fps = len(indices) / stream.seconds if stream.seconds > 0 else limits.video_fps
    return VisualInput(
        "video",
        str(path),
        size,
        geometry.grid(*size, frames),
        tuple(indices),
        geometry.temporal_patch_size / fps,
        _timestamps(indices, stream, limits, geometry.temporal_patch_size) if geometry.timed_frames else (),
    )


def _timestamps(indices: list[int], stream, limits: VisionLimits, temporal: int) -> tuple[float, ...]:
    """Each temporal patch's time in seconds: its frames' mean. LLaMA-Factory reads the frames' times
    off the stream's average frame rate, or, when the container states none, takes the sampled
    indices at `video_fps`."""
    rate = stream.average_fps if stream.average_fps > 0 and stream.seconds > 0 else limits.video_fps
    times = [index / rate for index in indices]
    times += [times[-1]] * (-len(times) % temporal)
    return tuple((times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal))


def _visual_text(item: VisualInput, geometry: ProcessorGeometry) -> str:
    token = IMAGE_TOKEN if item.kind == "image" else VIDEO_TOKEN
    if not item.timestamps:
        return VISION_START + token * geometry.tokens(item.grid) + VISION_END
    per_patch = VISION_START + token * geometry.tokens((1, *item.grid[1:])) + VISION_END
    return "".join(f"<{seconds:.1f} seconds>" + per_patch for seconds in item.timestamps)


def expand_placeholders(
    messages: list[dict[str, str]],
    images: list[VisualInput],
    videos: list[VisualInput],
    geometry: ProcessorGeometry,
    row: RowRef,
) -> list[dict[str, str]]:
    """The messages with each `<image>` / `<video>` replaced by its visual tokens, in order; the
    placeholders must match the row's media one for one."""
    expanded, images_used, videos_used = [], 0, 0
    for message in messages:
        content = message["content"]
        pieces = []
        while True:
            at_image, at_video = content.find(IMAGE_PLACEHOLDER), content.find(VIDEO_PLACEHOLDER)
            hits = [(at, kind) for at, kind in ((at_image, "image"), (at_video, "video")) if at >= 0]
            if not hits:
                pieces.append(content)
                break
            at, kind = min(hits)
            pieces.append(content[:at])
            items, used = (images, images_used) if kind == "image" else (videos, videos_used)
            if used >= len(items):
                raise DataError.at(
                    row, f"more <{kind}> placeholders than {kind}s ({len(items)} in the row's {kind}s column)"
                )
            pieces.append(_visual_text(items[used], geometry))
            if kind == "image":
                images_used += 1
            else:
                videos_used += 1
            content = content[at + len(f"<{kind}>") :]
        expanded.append({**message, "content": "".join(pieces)})
    for kind, used, items in (("image", images_used, images), ("video", videos_used, videos)):
        if used < len(items):
            raise DataError.at(row, f"{len(items)} {kind}s but {used} <{kind}> placeholders in the messages")
    return expanded

"""A `VisualInput`'s pixels as the vision tower takes them: flat patches (patches, C x T x P x P).

Images go through transformers' PIL Qwen2-VL image processor (the one that needs no torchvision),
built from the processor config saved with the model, after LLaMA-Factory's resize to
`VisualInput.size`. Video frames take the same per-frame steps with the *video* processor's pixel
bounds and normalisation; each pair of frames then becomes one temporal patch, in the layout of
transformers' `Qwen2VLVideoProcessor` (grid_t, h / merge, w / merge, merge, merge, C, T, P, P). That
processor needs torchvision, which our CPU torch cannot load, and it resizes with torchvision's
bicubic filter rather than PIL's: the pixels (not the token counts) differ from it by resampling.
Qwen3-VL's video processor sizes frames by the whole clip (`qwen_vl.ProcessorGeometry.timed_frames`):
its frames are resized to the grid's size here (PIL bicubic, the PIL processor's filter) and the
processor is left nothing to resize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, RowRef
from .media import open_image, video_frames
from .qwen_vl import ProcessorGeometry, VisualInput

# The processor settings that decide pixels (everything else in a saved config is bookkeeping).
_PIXEL_KEYS = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def _pil_processor(config: dict, geometry: ProcessorGeometry):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    bounds = (geometry.min_pixels, geometry.max_pixels)
    if geometry.timed_frames:  # frames come at their final size (a multiple of patch x merge)
        bounds = ((geometry.patch_size * geometry.merge_size) ** 2, 2**62)
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": bounds[0], "longest_edge": bounds[1]},
        patch_size=geometry.patch_size,
        merge_size=geometry.merge_size,
        temporal_patch_size=geometry.temporal_patch_size,
        **{key: config[key] for key in _PIXEL_KEYS if key in config},
    )


@dataclass
class PixelReader:
    """Reads the pixels of images and videos; built from the processors' saved configs."""

    image_config: dict
    video_config: dict
    image_geometry: ProcessorGeometry
    video_geometry: ProcessorGeometry

    def __post_init__(self) -> None:
        self._image = _pil_processor(self.image_config, self.image_geometry)
        self._video = _pil_processor(self.video_config, self.video_geometry)

    def __getstate__(self) -> dict:
        # Data loader workers rebuild the processors from the configs.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def _patches(self, processor, image) -> tuple[np.ndarray, tuple[int, int, int]]:
        out = processor(images=[image], return_tensors="np")
        return out["pixel_values"], tuple(int(x) for x in out["image_grid_thw"][0])

    def pixels(self, item: VisualInput, groups: list[int] | None = None) -> torch.Tensor:
        """(patches, C x T x P x P) float32 patches of one image or video; for a video, only its
        temporal groups `groups` (pairs of frames; default all), in order."""
        ref = RowRef(item.path, -1)
        if item.kind == "image":
            image = _at_size(open_image(Path(item.path), ref), item.size)
            patches, grid = self._patches(self._image, image)
        else:
            patches, grid = self._video_patches(item, ref, groups)
        if groups is not None and item.kind == "video":
            expected = (len(groups), *item.grid[1:])
        else:
            expected = tuple(item.grid)
        if grid != expected:
            raise DataError(
                f"{item.path}: the processor made a {grid} grid, the row was encoded for {tuple(item.grid)} "
                "(the file or the processor config changed since tokenizing?)"
            )
        return torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))

    def _video_patches(
        self, item: VisualInput, ref: RowRef, groups: list[int] | None
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        geometry = self.video_geometry
        temporal = geometry.temporal_patch_size
        indices = list(item.frames)
        if len(indices) % temporal:
            indices += [indices[-1]] * (temporal - len(indices) % temporal)  # LLaMA-Factory repeats the last frame
        if groups is not None:
            indices = [index for group in groups for index in indices[group * temporal : (group + 1) * temporal]]
        wanted = sorted(set(indices))
        frames = video_frames(Path(item.path), wanted, ref)
        if len(frames) != len(wanted):
            raise DataError.at(ref, f"video {item.path}: {len(frames)} of the {len(wanted)} sampled frames decoded")
        decoded = dict(zip(wanted, frames))
        frames = [decoded[index] for index in indices]
        per_frame = []
        for frame in frames:
            frame = _at_size(frame, item.size)
            if geometry.timed_frames:
                from PIL import Image

                frame = frame.resize((item.grid[2] * geometry.patch_size, item.grid[1] * geometry.patch_size), Image.BICUBIC)
            patches, (_, grid_h, grid_w) = self._patches(self._video, frame)
            # (patches, C, T, P, P) with the frame copied over T: keep one copy.
            per_frame.append(patches.reshape(grid_h * grid_w, 3, temporal, -1)[:, :, 0])
        stacked = [
            np.stack(per_frame[start : start + temporal], axis=2)  # (patches, C, T, P*P)
            for start in range(0, len(per_frame), temporal)
        ]
        flat = np.concatenate([g.reshape(g.shape[0], -1) for g in stacked], axis=0)
        return flat, (len(stacked), grid_h, grid_w)


def _at_size(image, size: tuple[int, int]):
    """The image at the size encoding chose (LLaMA-Factory's resize, `qwen_vl.regularize_image`:
    PIL's default filter), in RGB."""
    image = image.resize(size) if image.size != tuple(size) else image
    return image.convert("RGB") if image.mode != "RGB" else image

"""Qwen2-VL / Qwen2.5-VL visual token counts and placeholder expansion, by LLaMA-Factory's rules
(`data/multimodal/qwen_vl.py`): against transformers' own Qwen2-VL image processor on images of
every regime, on LLaMA-Factory's demo images and videos (skipped when ../shared/lf-data is absent)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.errors import DataError, RowRef
from ulysses_pro.data.multimodal.media import resolve_media, sample_indices, video_frames, video_stream
from ulysses_pro.data.multimodal.qwen_vl import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    ProcessorGeometry,
    VisionLimits,
    VisualInput,
    expand_placeholders,
    image_input,
    regularize_image,
    video_input,
)

# LLaMA-Factory's defaults, as the config keys carry them
LF_LIMITS = VisionLimits.of(DataArguments())
LF_MEDIA = Path(__file__).resolve().parents[4] / "shared" / "lf-data" / "mllm_demo_data"
ROW = RowRef("demo.json", 0)


def _items(kind: str, *grids) -> list[VisualInput]:
    return [VisualInput(kind, f"{kind}{i}", (0, 0), grid) for i, grid in enumerate(grids)]


def _processor_grid(image, limits: VisionLimits) -> tuple[int, ...]:
    """What LLaMA-Factory feeds the processor (its resize), through transformers' processor."""
    from transformers import Qwen2VLImageProcessorPil

    regular = regularize_image(image, limits.image_max_pixels, limits.image_min_pixels)
    return tuple(
        Qwen2VLImageProcessorPil()(images=[regular], return_tensors="pt")["image_grid_thw"][0].tolist()
    )


@pytest.mark.parametrize(
    "size",
    [(300, 168), (2000, 1500), (10, 500), (20, 20), (5000, 21), (28, 6000), (768, 768), (1, 1)],
    ids=["small", "over-max", "thin", "under-min", "wide", "tall", "at-max", "one-pixel"],
)
def test_image_token_counts_equal_the_processors_grid_after_llamafactorys_resize(tmp_path, size):
    path = tmp_path / "image.png"
    Image.new("RGB", size, (120, 30, 200)).save(path)
    limits = LF_LIMITS
    assert image_input(path, ProcessorGeometry(), limits, ROW).grid == _processor_grid(Image.open(path), limits)


@pytest.mark.skipif(not LF_MEDIA.is_dir(), reason="LLaMA-Factory's demo media not present")
@pytest.mark.parametrize("name", ["1.jpg", "2.jpg", "3.jpg"])
def test_llamafactory_demo_images_count_as_its_plugin_counts(name):
    limits = LF_LIMITS
    grid = image_input(LF_MEDIA / name, ProcessorGeometry(), limits, ROW).grid
    assert grid == _processor_grid(Image.open(LF_MEDIA / name), limits)
    assert ProcessorGeometry().tokens(grid) == math.prod(grid) // 4 > 0


@pytest.mark.skipif(not LF_MEDIA.is_dir(), reason="LLaMA-Factory's demo media not present")
@pytest.mark.parametrize("name", ["1.mp4", "2.avi", "3.mp4"])
def test_llamafactory_demo_videos_sample_frames_as_its_plugin_does(name):
    pytest.importorskip("av")
    limits = LF_LIMITS
    stream = video_stream(LF_MEDIA / name, ROW)
    indices = sample_indices(stream, limits.video_fps, limits.video_maxlen)
    wanted = min(stream.frames, limits.video_maxlen, max(1, math.floor(stream.seconds * limits.video_fps)))
    assert len(indices) == wanted and indices[0] == 0 and indices[-1] == stream.frames - 1
    frames = video_frames(LF_MEDIA / name, indices, ROW)
    assert len(frames) == len(indices)  # every sampled index decodes
    geometry = ProcessorGeometry.video_defaults()
    grid = video_input(LF_MEDIA / name, geometry, limits, ROW).grid
    assert grid[0] == (len(indices) + 1) // 2  # frame pairs, an odd count padded
    first = regularize_image(frames[0], limits.video_max_pixels, limits.video_min_pixels)
    assert grid[1:] == geometry.grid(first.width, first.height)[1:]  # the decoded frame's size agrees


def test_placeholders_expand_in_order_and_must_match_the_media():
    geometry = ProcessorGeometry()
    messages = [
        {"role": "user", "content": "<video>then<image>and<image>?"},
        {"role": "assistant", "content": "ok"},
    ]
    out = expand_placeholders(messages, _items("image", (1, 4, 4), (1, 2, 2)), _items("video", (2, 2, 4)), geometry, ROW)
    expected = (
        "<|vision_start|>" + VIDEO_TOKEN * 4 + "<|vision_end|>then"
        "<|vision_start|>" + IMAGE_TOKEN * 4 + "<|vision_end|>and"
        "<|vision_start|>" + IMAGE_TOKEN + "<|vision_end|>?"
    )
    assert out[0]["content"] == expected and out[1] == messages[1]
    with pytest.raises(DataError, match=r"demo.json row 0: more <image> placeholders than images \(1"):
        expand_placeholders(messages, _items("image", (1, 4, 4)), _items("video", (2, 2, 4)), geometry, ROW)
    with pytest.raises(DataError, match="demo.json row 0: 3 images but 2 <image> placeholders"):
        expand_placeholders(messages, _items("image", *[(1, 2, 2)] * 3), _items("video", (2, 2, 4)), geometry, ROW)


def test_a_missing_or_unreadable_media_file_names_the_row_and_where_it_looked(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"")
    Image.new("RGB", (30, 30)).save(tmp_path / "ok.png")
    assert resolve_media("ok.png", tmp_path, ROW, "images") == [tmp_path / "ok.png"]
    with pytest.raises(DataError, match=r"demo.json row 0: images\[1\] 'gone.jpg': no such file"):
        resolve_media(["ok.png", "gone.jpg"], tmp_path, ROW, "images")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="demo.json row 0: image .*broken.jpg: unreadable"):
        image_input(tmp_path / "broken.jpg", ProcessorGeometry(), LF_LIMITS, ROW)


def test_the_media_keys_default_to_llamafactorys_values():
    """LLaMA-Factory's hparams/model_args.py (ff6d4d1): 768², 32², 256², 16² pixels, 2 fps, 128 frames."""
    assert LF_LIMITS == VisionLimits(768 * 768, 32 * 32, 256 * 256, 16 * 16, 2.0, 128)

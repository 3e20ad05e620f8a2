"""Media in the data pipeline: a row's images and videos resolved when it is read, its placeholders
expanded into visual tokens (masked in the labels) when it is encoded, shown by `ulysses-pro
preview`; malformed media rows stop with file and row; training on them is refused by name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulysses_pro.commands.preview import describe, preview_rows
from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.multimodal.qwen_vl import ProcessorGeometry, VisionLimits, regularized_size
from ulysses_pro.parallel.reduce import IGNORE_INDEX

# LLaMA-Factory's defaults, as the config keys carry them
LF_LIMITS = VisionLimits.of(DataArguments())
LF_DATA = Path(__file__).resolve().parents[4] / "shared" / "lf-data"
QWEN_TOKENIZER = Path(__file__).resolve().parents[4] / "shared" / "lf-golden" / "tokenizers" / "qwen2.5"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


@pytest.fixture
def vision_tokenizer(tmp_path, tokenizer) -> str:
    """The built-in tokenizer with Qwen2-VL's vision tokens added (a model folder without weights)."""
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    folder = tmp_path / "vision-tokenizer"
    tokenizer.save_pretrained(folder)
    return str(folder)


def _image_tokens(size: tuple[int, int]) -> int:
    limits, geometry = LF_LIMITS, ProcessorGeometry()
    return geometry.tokens(
        geometry.grid(*regularized_size(*size, limits.image_max_pixels, limits.image_min_pixels))
    )


def _dataset(tmp_path: Path, rows: list[dict]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for name, size in (("wide.png", (300, 168)), ("tall.png", (50, 900))):
        Image.new("RGB", size, (10, 200, 90)).save(folder / name)
    (folder / "pictures.json").write_text(json.dumps(rows))
    entry = {
        "file_name": "pictures.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
    }
    entry["tags"] = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
    }
    (folder / "dataset_info.json").write_text(json.dumps({"pictures": entry}))
    return folder


def _chat(*turns: str) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def _config(model: str, folder: Path, tmp_path: Path, **keys):
    base = {
        "model_name_or_path": model,
        "template": "qwen2_vl",
        "dataset": "pictures",
        "dataset_dir": str(folder),
        "stage": "sft",
        "do_train": True,
        "output_dir": str(tmp_path / "out"),
    }
    return load_config({**base, **keys})


def test_placeholders_become_masked_visual_tokens_and_preview_counts_them(tmp_path, vision_tokenizer):
    rows = [{"messages": _chat("<image>Which way? <image>", "Both."), "images": ["wide.png", "tall.png"]}]
    folder = _dataset(tmp_path, rows)
    tokenizer, previewed = preview_rows(_config(vision_tokenizer, folder, tmp_path), 1)
    ((ref, row),) = previewed
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expected = _image_tokens((300, 168)) + _image_tokens((50, 900))
    assert row["input_ids"].count(pad) == expected > 0
    assert all(label == IGNORE_INDEX for token, label in zip(row["input_ids"], row["labels"]) if token == pad)
    shown = describe(tokenizer, ref, row, color=False)
    assert f"visual: {expected} image" in shown
    assert f"<|image_pad|> x {_image_tokens((300, 168))}<|vision_end|>" in shown  # folded, not 66 copies


@pytest.mark.parametrize(
    ("row", "keys", "message"),
    [
        (
            {"messages": _chat("<image><image>?", "a"), "images": ["wide.png"]},
            {},
            "more <image> placeholders than images",
        ),
        (
            {"messages": _chat("no placeholder", "a"), "images": ["wide.png"]},
            {},
            "1 images but 0 <image> placeholders",
        ),
        (
            {"messages": _chat("<image>", "a"), "images": ["gone.png"]},
            {},
            r"images\[0\] 'gone.png': no such file",
        ),
        (
            {"messages": _chat("<image>", "a"), "images": ["wide.png"]},
            {"template": "chatml"},
            "need a vision template",
        ),
        (
            {"messages": _chat("<image>", "a"), "images": ["wide.png"]},
            {"cutoff_len": 40},
            "over cutoff_len 40",
        ),
    ],
    ids=["too-many-placeholders", "too-few", "missing-file", "text-template", "over-cutoff"],
)
def test_malformed_media_rows_stop_with_file_and_row(tmp_path, vision_tokenizer, row, keys, message):
    folder = _dataset(tmp_path, [row])
    with pytest.raises(DataError, match=rf"pictures.json.*row 0: .*{message}"):
        preview_rows(_config(vision_tokenizer, folder, tmp_path, **keys), 1)


def test_media_without_a_vision_model_or_in_another_stage_is_refused_by_name_before_loading(
    tmp_path, vision_tokenizer
):
    from ulysses_pro.train.preflight import preflight

    from ...media_fixtures import write_vision_model

    folder = _dataset(tmp_path, [{"messages": _chat("<image>", "a"), "images": ["wide.png"]}])
    with pytest.raises(ConfigError, match="dataset: pictures: images/videos columns, but the model .* no vision tower"):
        preflight(_config("tiny:llama", folder, tmp_path), 1)
    model = str(write_vision_model(tmp_path / "vl"))
    preflight(_config(model, folder, tmp_path), 1)  # sft on a wired vision-language model: fine
    with pytest.raises(ConfigError, match="stage pt with images or videos is not built yet"):
        preflight(_config(model, folder, tmp_path, stage="pt"), 1)
    with pytest.raises(ConfigError, match="streaming with images/videos is not built yet"):
        preflight(_config(model, folder, tmp_path, streaming=True, max_steps=1), 1)
    (Path(model) / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match="no image processor config .* to read images with"):
        preflight(_config(model, folder, tmp_path), 1)
    from ulysses_pro.data.pipeline import load_rows

    with pytest.raises(DataError, match="stage grpo does not take media yet"):
        load_rows(_config(vision_tokenizer, folder, tmp_path).data, "grpo")


@pytest.mark.skipif(not (LF_DATA.is_dir() and QWEN_TOKENIZER.is_dir()), reason="../shared not present")
def test_llamafactory_demo_rows_carry_the_visual_tokens_its_plugin_gives(tmp_path):
    pytest.importorskip("av")
    from ulysses_pro.data.errors import RowRef
    from ulysses_pro.data.multimodal.qwen_vl import image_input, video_input

    for dataset, kind, rows_wanted in (("mllm_demo", "images", 6), ("mllm_video_demo", "videos", 3)):
        config = _config(str(QWEN_TOKENIZER), LF_DATA, tmp_path, dataset=dataset)
        tokenizer, rows = preview_rows(config, rows_wanted)
        raw = json.loads((LF_DATA / f"{dataset}.json").read_text())
        assert len(rows) == rows_wanted
        pad = tokenizer.convert_tokens_to_ids("<|image_pad|>" if kind == "images" else "<|video_pad|>")
        for (ref, row), source in zip(rows, raw):
            geometry = ProcessorGeometry() if kind == "images" else ProcessorGeometry.video_defaults()
            read = image_input if kind == "images" else video_input
            wanted = sum(
                math.prod(read(LF_DATA / path, geometry, LF_LIMITS, RowRef("x", 0)).grid) // 4
                for path in source[kind]
            )
            assert row["input_ids"].count(pad) == wanted > 0, ref


def test_processor_geometry_is_found_where_transformers_finds_it(tmp_path, vision_tokenizer):
    """The image processor's bounds from `preprocessor_config.json`; the video processor's from its
    own file, else the image processor's file (transformers' fallback), else the class defaults; a
    v5 `processor_config.json` with nested entries wins over both."""
    from types import SimpleNamespace

    from ulysses_pro.data.multimodal.rows import vision_settings

    folder = Path(vision_tokenizer)
    data_args = SimpleNamespace(
        template="qwen2_vl",
        **{k: getattr(LF_LIMITS, k) for k in VisionLimits.__dataclass_fields__},
    )
    tokenizer = SimpleNamespace(name_or_path=str(folder))
    settings = vision_settings(data_args, tokenizer)
    assert settings.image == ProcessorGeometry() and settings.video == ProcessorGeometry.video_defaults()
    (folder / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 12845056}))
    settings = vision_settings(data_args, tokenizer)
    assert settings.image.max_pixels == settings.video.max_pixels == 12845056  # the video falls back
    (folder / "video_preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 100352, "longest_edge": 602112}})
    )
    assert vision_settings(data_args, tokenizer).video.max_pixels == 602112
    (folder / "processor_config.json").write_text(
        json.dumps({"video_processor": {"max_pixels": 4096 * 28 * 28}})
    )
    assert vision_settings(data_args, tokenizer).video.max_pixels == 4096 * 28 * 28
    assert vision_settings(SimpleNamespace(template="qwen"), tokenizer) is None


def test_visual_tokens_stay_masked_when_the_prompt_trains(tmp_path, vision_tokenizer):
    rows = [{"messages": _chat("look <image> here", "Both."), "images": ["wide.png"]}]
    folder = _dataset(tmp_path, rows)
    config = _config(vision_tokenizer, folder, tmp_path, train_on_prompt=True)
    tokenizer, ((_, row),) = preview_rows(config, 1)
    vision = {tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    labelled = [(token, label) for token, label in zip(row["input_ids"], row["labels"])]
    assert any(token in vision for token, _ in labelled)
    assert all(label == IGNORE_INDEX for token, label in labelled if token in vision)
    assert (
        sum(label != IGNORE_INDEX for token, label in labelled if token not in vision) > 5
    )  # the prompt trains


def test_qwen3_vl_counts_images_with_16_pixel_patches_and_writes_each_video_patch_with_its_time(tmp_path):
    """Qwen3-VL's processors cut 16-pixel patches (read from their saved configs); a video is sized
    by frames x height x width together (its video processor's bounds) and each temporal patch is
    written after `<t seconds>`, t the mean time of its two sampled frames (LLaMA-Factory's
    `Qwen3VLPlugin`)."""
    pytest.importorskip("av")
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    from ...media_fixtures import write_media_dataset, write_vision_model

    model = str(write_vision_model(tmp_path / "vl3", "qwen3_vl"))
    data = write_media_dataset(tmp_path / "data")
    config = _config(model, data, tmp_path, dataset="media_demo", template="qwen3_vl_nothink")
    tokenizer, rows = preview_rows(config, 6)
    first = rows[0][1]["images"][0]
    # 56 x 56 is raised to Qwen3-VL's 256 x 256 floor: 16 x 16 patches, 64 visual tokens
    assert first.grid == (1, 16, 16)
    assert rows[0][1]["input_ids"].count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 64
    # clip0.mp4: 8 frames at 4 fps, 64 x 48; video_fps 2 samples floor(2 s x 2) = 4 frames, spread
    # evenly over the 8 (LLaMA-Factory's `_get_video_sample_indices`).
    (row,) = [r for _, r in rows if r.get("videos")][:1]
    indices = np.linspace(0, 7, 4).astype(np.int32).tolist()
    times = [index / 4 for index in indices]
    stamps = [(times[i] + times[i + 1]) / 2 for i in (0, 2)]
    height, width = smart_resize(4, 48, 64, temporal_factor=2, factor=32, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    per_patch = (height // 16) * (width // 16) // 4
    assert row["videos"][0].grid == (2, height // 16, width // 16)
    text = tokenizer.decode(row["input_ids"])
    expected = "".join(
        f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_patch + "<|vision_end|>" for t in stamps
    )
    assert expected in text and text.count("<|vision_start|>") == 2

"""`make-tiny-model --arch qwen2_5_vl` writes a folder transformers loads as Qwen2.5-VL with its
processors, and the shipped `data/media_demo` rows (examples/vision_sft.yaml) encode with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulysses_pro.cli import main

DATA = Path(__file__).resolve().parents[3] / "data"

pytest.importorskip("av")


def test_tiny_vision_model_folder_loads_and_the_shipped_media_demo_encodes_with_it(tmp_path):
    from transformers import AutoModelForImageTextToText

    from ulysses_pro.commands.preview import preview_rows
    from ulysses_pro.config import load_config
    from ulysses_pro.data.multimodal.qwen_vl import ProcessorGeometry

    out = tmp_path / "tiny-vl"
    assert main(["make-tiny-model", "--arch", "qwen2_5_vl", "--out", str(out)]) == 0
    model = AutoModelForImageTextToText.from_pretrained(str(out))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert (out / "preprocessor_config.json").is_file() and (out / "video_preprocessor_config.json").is_file()
    config = load_config(
        {
            "model_name_or_path": str(out),
            "stage": "sft",
            "do_train": True,
            "template": "qwen2_vl",
            "dataset": "media_demo",
            "dataset_dir": str(DATA),
            "cutoff_len": 512,
            "output_dir": str(tmp_path / "run"),
        }
    )
    tokenizer, rows = preview_rows(config, 100)
    assert len(rows) == 14
    image_pad = model.config.image_token_id
    video_pad = model.config.video_token_id
    for ref, row in rows:
        images, videos = row.get("images", []), row.get("videos", [])
        assert len(images) + len(videos) == 1, ref
        wanted = sum(ProcessorGeometry().tokens(item.grid) for item in images + videos)
        found = sum(1 for t in row["input_ids"] if t in (image_pad, video_pad))
        assert found == wanted > 0, ref

"""A vision-language model on the command line: `chat --image` gives generate the image's pixels,
grid and visual tokens (and answers); `export` merges LoRA and writes the processor configs, so
transformers loads the folder as the same class with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from ulysses_pro.cli import main

from ..media_fixtures import write_media_dataset, write_vision_model

pytest.importorskip("av")


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-commands")
    return write_vision_model(root / "model"), write_media_dataset(root / "data", videos=False)


def _config(tmp_path, **keys) -> str:
    path = tmp_path / "run.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in keys.items()))
    return str(path)


def test_chat_with_an_image_generates_from_its_pixels_and_visual_tokens(vision, tmp_path, capsys, monkeypatch):
    from transformers import GenerationMixin

    from ulysses_pro.config.args import DataArguments
    from ulysses_pro.data.multimodal.qwen_vl import ProcessorGeometry, VisionLimits

    model_dir, data = vision
    seen = {}
    generate = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        seen.update(kwargs, config=self.config)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    config = _config(tmp_path, model_name_or_path=str(model_dir), template="qwen2_vl", do_sample=False, max_new_tokens=4)
    image = data / "image1.png"  # 84 x 56: grid (1, 4, 6), 6 visual tokens
    assert main(["chat", config, "--prompt", "What is this?", "--image", str(image)]) == 0
    ids = seen["input_ids"][0]
    tokens = int((ids == seen["config"].image_token_id).sum())
    limits = VisionLimits.of(DataArguments())
    assert seen["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert tokens == ProcessorGeometry().tokens((1, 4, 6)) == 6 and limits.image_max_pixels > 84 * 56
    assert seen["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    assert seen["mm_token_type_ids"].sum() == tokens
    assert capsys.readouterr().out.strip()  # an answer was streamed


def test_export_writes_the_merged_vision_language_model_with_its_processors(vision, tmp_path):
    from transformers import AutoModelForImageTextToText

    model_dir, data = vision
    train = _config(
        tmp_path,
        model_name_or_path=str(model_dir),
        stage="sft",
        do_train=True,
        finetuning_type="lora",
        template="qwen2_vl",
        dataset="media_demo",
        dataset_dir=str(data),
        cutoff_len=256,
        max_steps=2,
        learning_rate=0.05,
        output_dir=str(tmp_path / "adapter"),
        report_to="none",
        save_strategy="no",
    )
    assert main(["train", train]) == 0
    export = _config(
        tmp_path,
        model_name_or_path=str(model_dir),
        adapter_name_or_path=str(tmp_path / "adapter"),
        finetuning_type="lora",
        template="qwen2_vl",
        export_dir=str(tmp_path / "merged"),
    )
    assert main(["export", export]) == 0
    merged_dir = tmp_path / "merged"
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        assert (merged_dir / name).read_text() == (model_dir / name).read_text()
    merged = AutoModelForImageTextToText.from_pretrained(str(merged_dir)).eval()
    assert type(merged).__name__ == "Qwen2_5_VLForConditionalGeneration"
    from peft import PeftModel

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    base = AutoModelForImageTextToText.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
        after = merged(input_ids=ids).logits
        torch.testing.assert_close(after, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    assert (after - before).abs().max() > 1e-4  # the adapter trained and was merged

"""LLaMA-Factory's vision keys decide what trains in a vision-language model: by default neither the
vision tower nor the projector (full, freeze and LoRA alike); each key lifts or adds its part."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ulysses_pro.config import load_config
from ulysses_pro.models.loader import load_model, load_tokenizer

from ...media_fixtures import write_vision_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write_vision_model(tmp_path_factory.mktemp("vl") / "model"))


def _trainable(model_dir, tmp_path, **keys) -> set[str]:
    config = load_config(
        {"model_name_or_path": model_dir, "stage": "sft", "do_train": True, "dataset": "x", "output_dir": str(tmp_path), **keys}
    )
    model = load_model(config.model, config.finetuning, load_tokenizer(config.model), config.training)
    return {name for name, param in model.named_parameters() if param.requires_grad}


def _parts(names: set[str]) -> set[str]:
    found = set()
    for name in names:
        if ".visual.merger." in name:
            found.add("projector")
        elif ".visual." in name:
            found.add("vision")
        elif ".language_model." in name or "lm_head" in name or "embed_tokens" in name:
            found.add("language")
    return found


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_defaults_train_only_the_language_model(model_dir, tmp_path, finetuning_type):
    assert _parts(_trainable(model_dir, tmp_path, finetuning_type=finetuning_type)) == {"language"}


def test_each_key_adds_or_removes_its_part(model_dir, tmp_path):
    assert _parts(_trainable(model_dir, tmp_path, finetuning_type="full", freeze_vision_tower=False)) == {
        "language",
        "vision",
    }
    assert _parts(
        _trainable(model_dir, tmp_path, finetuning_type="full", freeze_multi_modal_projector=False)
    ) == {"language", "projector"}
    assert _parts(
        _trainable(
            model_dir,
            tmp_path,
            finetuning_type="full",
            freeze_vision_tower=False,
            freeze_multi_modal_projector=False,
            freeze_language_model=True,
        )
    ) == {"vision", "projector"}
    lora = _trainable(model_dir, tmp_path, finetuning_type="lora", freeze_vision_tower=False)
    assert any(".visual.blocks." in n and "lora_" in n for n in lora)


def test_frozen_prefixes_are_empty_for_a_text_model():
    from ulysses_pro.models.multimodal.freezing import frozen_prefixes

    assert frozen_prefixes("llama", SimpleNamespace()) == ()

"""Small reward-model folders in the layout our rm stage writes, built without training."""

from __future__ import annotations

from pathlib import Path

import torch

from ulysses_pro.models.loader import load_model, load_tokenizer
from ulysses_pro.models.value_head import attach_value_head, save_value_head

from ..harness import training_config


def write_reward_models(folder: Path) -> dict[str, Path]:
    """`full`: a whole tiny Llama + value head; `lora`: a LoRA adapter (non-zero B, so it changes
    the scores) on the same seeded base the tests' policies start from, + value head."""
    paths = {}
    for kind in ("full", "lora"):
        config = training_config(
            stage="rm", finetuning_type=kind, dataset="demo_pairs", output_dir=str(folder / kind)
        )
        tokenizer = load_tokenizer(config.model)
        model = load_model(config.model, config.finetuning, tokenizer, config.training)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        attach_value_head(model, seed=11)
        with torch.no_grad():
            model.get_base_model().v_head.weight.mul_(20) if kind == "lora" else model.v_head.weight.mul_(20)
        path = folder / kind
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        save_value_head(model, path)
        paths[kind] = path
    return paths

"""Tiny random vision-language models (Qwen2.5-VL, Qwen3-VL) built from transformers' config classes,
saved with their processors' configs, for tests and examples without a network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
TINY_VISION_ARCHES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")

# Qwen3-VL's image processor: 16-pixel patches, mean and std 0.5, at least 256 x 256 pixels (the
# values its released preprocessor_config.json carries).
_QWEN3_VL_IMAGES = {
    "patch_size": 16,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
}

# transformers' Qwen2-VL video processor defaults (its class needs torchvision to build, so its
# config is written as that class would write it).
_VIDEO_PROCESSOR = {
    "video_processor_type": "Qwen2VLVideoProcessor",
    "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
}
# transformers' Qwen3-VL video processor defaults (frames count in its pixel bounds), with the
# image processor's normalisation.
_QWEN3_VL_VIDEO_PROCESSOR = {
    **_VIDEO_PROCESSOR,
    "video_processor_type": "Qwen3VLVideoProcessor",
    "size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768},
    "patch_size": 16,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def with_vision_tokens(tokenizer):
    """The tokenizer with Qwen-VL's vision tokens (added as special tokens where missing)."""
    missing = [t for t in VISION_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer


def build_tiny_vision_config(arch: str, tokenizer, hidden_size: int = 64, num_layers: int = 2, **text: Any):
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // 4,
        "max_position_embeddings": 32768,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        **text,
    }
    # Rotary pairs per axis (time, height, width); they sum to head_dim / 2.
    half = text_config["head_dim"] // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text_config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision.update(window_size=56, fullatt_block_indexes=[1], tokens_per_second=2)
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision, **tokens)
    elif arch == "qwen3_vl":
        from transformers import Qwen3VLConfig

        text_config["rope_parameters"]["mrope_interleaved"] = True
        vision.update(patch_size=16, deepstack_visual_indexes=[0, 1], num_position_embeddings=64)
        config = Qwen3VLConfig(text_config=text_config, vision_config=vision, **tokens)
    elif arch == "qwen3_5":
        # Qwen3.5: the Gated DeltaNet hybrid text model (tiny_families' shape) under the Qwen3-VL tower.
        from transformers import Qwen3_5Config

        from ..tiny_families import build_family_config

        text_config = build_family_config(
            "qwen3_5_text",
            len(tokenizer),
            hidden_size=hidden_size,
            head_dim=32,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ).to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            text_config.pop(key, None)
        rope = text_config["rope_parameters"]
        pairs = int(text_config["head_dim"] * rope.get("partial_rotary_factor", 1.0)) // 2
        rope.update(mrope_section=[pairs - 2 * (pairs // 3), pairs // 3, pairs // 3], mrope_interleaved=True)
        vision.update(patch_size=16, num_position_embeddings=64)
        config = Qwen3_5Config(text_config=text_config, vision_config=vision, **tokens)
    else:
        raise ValueError(f"unknown tiny vision arch {arch!r}; valid choices: {', '.join(TINY_VISION_ARCHES)}")
    config.tie_word_embeddings = True
    return config


def build_tiny_vision_model(arch: str, tokenizer, *, seed: int = 0, **sizes: Any):
    from transformers import AutoModelForImageTextToText

    config = build_tiny_vision_config(arch, with_vision_tokens(tokenizer), **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config, dtype=torch.float32, attn_implementation="sdpa")


def make_tiny_vision_model(
    arch: str,
    out_dir: str | Path,
    tokenizer=None,
    *,
    seed: int = 0,
    video_pixels: tuple[int, int] | None = None,
    **sizes: Any,
) -> Path:
    """Write the model, its tokenizer (with the vision tokens) and its image and video processor
    configs to `out_dir`; it loads with `AutoModelForImageTextToText.from_pretrained(out_dir)`.
    `video_pixels`: the video processor's (min, max) pixels, when tests want fewer tokens than the
    real processor's floor of 128 x 28 x 28."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ..tokenizer import load_builtin_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = with_vision_tokens(tokenizer if tokenizer is not None else load_builtin_tokenizer())
    build_tiny_vision_model(arch, tokenizer, seed=seed, **sizes).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    images = _QWEN3_VL_IMAGES if arch in ("qwen3_vl", "qwen3_5") else {}
    Qwen2VLImageProcessorPil(**images).save_pretrained(str(out))
    video = dict(_QWEN3_VL_VIDEO_PROCESSOR if arch in ("qwen3_vl", "qwen3_5") else _VIDEO_PROCESSOR)
    if video_pixels is not None:
        video["size"] = {"shortest_edge": video_pixels[0], "longest_edge": video_pixels[1]}
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    return out

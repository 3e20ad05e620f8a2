"""Tiny configs of any registered family keep the mechanisms the family sweep must exercise."""

from __future__ import annotations

import torch

from ulysses_pro.models.tiny import build_tiny_model
from ulysses_pro.models.tiny_families import _layer_pattern, tiny_family_kwargs


def test_layer_pattern_keeps_every_kind_the_family_mixes():
    gemma3 = ["sliding_attention"] * 5 + ["full_attention"]
    assert _layer_pattern(gemma3, 4) == ["sliding_attention"] * 3 + ["full_attention"]
    qwen3_next = ["linear_attention"] * 3 + ["full_attention"]
    assert _layer_pattern(qwen3_next * 12, 4) == qwen3_next
    assert _layer_pattern(["a", "b", "c"], 2) == ["a", "c"]


def test_hybrid_family_keeps_recurrent_and_attention_layers():
    model = build_tiny_model("qwen3_next")
    kinds = model.config.layer_types
    assert "linear_attention" in kinds and "full_attention" in kinds
    assert model.config.num_hidden_layers == len(kinds) == 4
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_mla_family_has_value_heads_wider_than_the_rope_part():
    kwargs = tiny_family_kwargs("deepseek_v3", 1024)
    assert kwargs["v_head_dim"] != kwargs["qk_nope_head_dim"] + kwargs["qk_rope_head_dim"]
    assert kwargs["num_key_value_heads"] == kwargs["num_attention_heads"]


def test_family_without_sdpa_builds_with_eager_attention_and_no_dropout():
    model = build_tiny_model("gpt2")
    assert model.config.attn_pdrop == model.config.resid_pdrop == model.config.embd_pdrop == 0.0
    bloom = build_tiny_model("bloom")
    assert bloom.config._attn_implementation == "eager"
    ids = torch.randint(3, 500, (1, 16))
    assert torch.isfinite(bloom(input_ids=ids, labels=ids).loss)

"""Llama 4's NoPE temperature tuning is rescaled from the shard-local positions transformers uses to
the tokens' real positions."""

from __future__ import annotations

import torch

from ulysses_pro.models.nope_temperature import retune_query, tunes_temperature
from ulysses_pro.models.tiny import build_tiny_model


def _nope_layer():
    model = build_tiny_model("llama4_text")
    layers = [layer.self_attn for layer in model.model.layers]
    (nope,) = [attention for attention in layers if tunes_temperature(attention)]
    return nope


def _hf_scale(module, positions):
    return torch.log1p(torch.floor((positions.float() + 1.0) / module.floor_scale)) * module.attn_scale + 1.0


def test_a_shard_query_gets_the_scale_of_its_global_positions():
    module = _nope_layer()
    query = torch.randn(2, 4, 12, 8)
    shard_positions = torch.arange(24, 36)[None].expand(2, -1)  # the second shard of 36 tokens
    as_transformers_scaled_it = query * _hf_scale(module, torch.arange(12))[None, None, :, None]
    retuned = retune_query(module, as_transformers_scaled_it, shard_positions)
    expected = query * _hf_scale(module, shard_positions)[:, None, :, None]
    assert torch.allclose(retuned, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(as_transformers_scaled_it, expected, rtol=1e-3)


def test_an_unpacked_row_at_one_rank_is_left_as_transformers_scaled_it():
    module = _nope_layer()
    query = torch.randn(1, 4, 30, 8)
    assert torch.equal(retune_query(module, query, torch.arange(30)[None]), query)

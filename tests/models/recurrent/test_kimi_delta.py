"""Kimi Delta Attention restarts its convolution and per-channel-decay delta rule at every packed
document: a packed row gives each document the logits and gradients it gets alone."""

from __future__ import annotations

from ulysses_pro.models.attention import isolate_packed_documents
from ulysses_pro.models.recurrent import kimi_delta, recurrent_mixers
from ulysses_pro.models.tiny import build_tiny_model

from .packing import assert_packed_equals_alone


def test_packed_documents_compute_what_they_compute_alone():
    model = build_tiny_model("kimi_linear")
    isolate_packed_documents(model)
    assert recurrent_mixers(model)
    assert_packed_equals_alone(model)


def test_each_rank_takes_its_heads_rows_of_q_k_and_v():
    model = build_tiny_model("kimi_linear")
    (_, layer), *_ = recurrent_mixers(model)
    width = layer.qkv_dim
    rows = kimi_delta._conv_rows(layer, 2, 1)
    half = list(range(width // 2, width))
    assert rows == half + [width + r for r in half] + [2 * width + r for r in half]

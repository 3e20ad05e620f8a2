"""Gated DeltaNet layers (Qwen3-Next, Qwen3.5) restart their convolution and delta-rule state at
every packed document: a packed row gives each document the logits and gradients it gets alone."""

from __future__ import annotations

import pytest

from ulysses_pro.models.attention import isolate_packed_documents
from ulysses_pro.models.recurrent import recurrent_mixers
from ulysses_pro.models.tiny import build_tiny_model

from .packing import assert_packed_equals_alone, packed_and_alone


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_5_text"])
def test_packed_documents_compute_what_they_compute_alone(family):
    model = build_tiny_model(family)
    assert isolate_packed_documents(model) is None  # attention is transformers' own
    assert len(recurrent_mixers(model)) == 3  # three linear-attention layers, one attention layer
    assert_packed_equals_alone(model)


def test_without_isolation_a_packed_document_reads_the_previous_one():
    """What the test above guards against: transformers' own layer carries state across documents."""
    model = build_tiny_model("qwen3_5_text")
    packed, alone = packed_and_alone(model)
    assert (packed - alone).abs().max() > 1e-3

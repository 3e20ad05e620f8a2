"""LFM2's gated short convolutions restart at every packed document."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.models.attention import isolate_packed_documents
from ulysses_pro.models.recurrent import recurrent_mixers
from ulysses_pro.models.tiny import build_tiny_model

from .packing import gradients, packed_and_alone


@pytest.mark.parametrize("family", ["lfm2", "lfm2_moe"])
def test_packed_documents_compute_what_they_compute_alone(family):
    model = build_tiny_model(family)
    isolate_packed_documents(model)
    assert recurrent_mixers(model)
    packed, alone = packed_and_alone(model)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradients(model, packed), gradients(model, alone), rtol=1e-4, atol=1e-6)


def test_without_isolation_a_packed_document_reads_the_previous_one():
    model = build_tiny_model("lfm2")
    packed, alone = packed_and_alone(model)
    assert (packed - alone).abs().max() > 1e-4

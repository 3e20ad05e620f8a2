"""Mamba selective-scan mixers (Jamba, Mamba, Falcon-Mamba) restart their convolution and scan at every packed
document. Jamba's layers do not hand keyword arguments to their mixer, so the mixer takes the model
call's context from the model's pre-hook."""

from __future__ import annotations

import pytest

from ulysses_pro.models.tiny import build_tiny_model

from .packing import assert_isolated_family_packs_exactly, packed_and_alone


@pytest.mark.parametrize("family", ["jamba", "mamba", "falcon_mamba"])
def test_packed_documents_compute_what_they_compute_alone(family):
    assert_isolated_family_packs_exactly(family)


def test_without_isolation_a_packed_document_reads_the_previous_one():
    model = build_tiny_model("jamba")
    packed, alone = packed_and_alone(model)
    assert (packed - alone).abs().max() > 1e-4

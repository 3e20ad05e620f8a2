"""Gated DeltaNet layers (Qwen3-Next, Qwen3.5) restart their convolution and delta-rule state at
every packed document: a packed row gives each document the logits and gradients it gets alone."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.models.attention import isolate_packed_documents
from ulysses_pro.models.tiny import build_tiny_model

LENGTHS = [23, 37, 30]  # off the delta rule's 64-token chunks and longer than the 4-tap convolution


def _packed_and_alone(model):
    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, 1000, (1, n), generator=generator) for n in LENGTHS]
    packed = torch.cat(docs, dim=1)
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    packed_logits = model(input_ids=packed, position_ids=positions, use_cache=False).logits
    alone_logits = [
        model(input_ids=d, position_ids=torch.arange(d.shape[1])[None], use_cache=False).logits for d in docs
    ]
    return packed_logits, torch.cat(alone_logits, dim=1)


def _grads(model, logits):
    model.zero_grad()
    logits.square().mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_5_text"])
def test_packed_documents_compute_what_they_compute_alone(family):
    model = build_tiny_model(family)
    assert isolate_packed_documents(model) == 3  # three linear-attention layers, one attention layer
    packed, alone = _packed_and_alone(model)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grads(model, packed), _grads(model, alone), rtol=1e-4, atol=1e-6)


def test_without_isolation_a_packed_document_reads_the_previous_one():
    """What the test above guards against: transformers' own layer carries state across documents."""
    model = build_tiny_model("qwen3_5_text")
    packed, alone = _packed_and_alone(model)
    assert (packed - alone).abs().max() > 1e-3

"""A packed row of three documents against the same documents alone, through a whole tiny model."""

from __future__ import annotations

import torch

LENGTHS = [23, 37, 30]  # off the 16/64-token scan chunks and longer than the 4-tap convolutions


def packed_and_alone(model):
    """(logits of the packed row, logits of each document alone laid end to end)."""
    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, 1000, (1, n), generator=generator) for n in LENGTHS]
    packed = torch.cat(docs, dim=1)
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    packed_logits = model(input_ids=packed, position_ids=positions, use_cache=False).logits
    alone = [
        model(input_ids=d, position_ids=torch.arange(d.shape[1])[None], use_cache=False).logits for d in docs
    ]
    return packed_logits, torch.cat(alone, dim=1)


def assert_packed_equals_alone(model) -> None:
    """Logits and parameter gradients of the packed row equal those of the documents alone."""
    packed, alone = packed_and_alone(model)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradients(model, packed), gradients(model, alone), rtol=1e-4, atol=1e-6)


def gradients(model, logits):
    """Every parameter gradient of a fixed function of `logits`, flattened."""
    model.zero_grad()
    logits.square().mean().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def assert_isolated_family_packs_exactly(family: str) -> None:
    """A tiny `family` model with `isolate_packed_documents`: its mixers are driven, and a packed row
    computes what its documents compute alone."""
    from ulysses_pro.models.attention import isolate_packed_documents
    from ulysses_pro.models.recurrent import recurrent_mixers
    from ulysses_pro.models.tiny import build_tiny_model

    model = build_tiny_model(family)
    isolate_packed_documents(model)
    assert recurrent_mixers(model)
    assert_packed_equals_alone(model)

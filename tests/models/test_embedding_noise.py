"""NEFTune noise: per-document scale, none on padding, gone after the forward."""

from __future__ import annotations

import math

import torch

from ulysses_pro.models.embedding_noise import noise_scale, noisy_embeddings
from ulysses_pro.models.tiny import build_tiny_model


def test_scale_is_alpha_over_sqrt_of_document_length_times_width():
    lengths = torch.tensor([[3, 3, 3, 5, 5, 5, 5, 5, 0]])
    scale = noise_scale(lengths, hidden_size=16, alpha=4.0)
    assert torch.allclose(scale[0, :3], torch.full((3,), 4.0 / math.sqrt(3 * 16)))
    assert torch.allclose(scale[0, 3:8], torch.full((5,), 4.0 / math.sqrt(5 * 16)))
    assert scale[0, 8] == 0


def test_noise_stays_within_each_documents_bound_and_spares_padding(tokenizer):
    model = build_tiny_model("llama", tokenizer, seed=0)
    embed = model.get_input_embeddings()
    ids = torch.randint(3, 100, (2, 12))
    lengths = torch.tensor([[4] * 4 + [8] * 8, [10] * 10 + [0] * 2])
    clean = embed(ids)
    generator = torch.Generator().manual_seed(0)
    with noisy_embeddings(model, lengths, 5.0, generator):
        noisy = embed(ids)
    noise = (noisy - clean).abs().amax(dim=-1)
    bound = noise_scale(lengths, clean.shape[-1], 5.0)
    assert torch.all(noise <= bound + 1e-6)
    # Uniform noise over 128+ dimensions comes close to its bound; short documents get more of it.
    assert torch.all(noise[lengths > 0] > 0.9 * bound[lengths > 0])
    assert noise[0, :4].min() > noise[0, 4:].max()
    assert torch.all(noise[1, 10:] == 0)
    assert torch.equal(embed(ids), clean)  # the hook is gone

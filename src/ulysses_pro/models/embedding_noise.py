"""NEFTune: uniform noise on the input embeddings while training (Jain et al. 2023, arXiv:2310.05914).

The paper scales noise drawn from U(-1, 1) by alpha / sqrt(L * d), with L the sequence length and d
the hidden size. Here L is the number of real tokens of the document each token belongs to, so a
packed row (several documents) or a padded batch gets the noise each document would get alone, and
padding gets none. Under sequence parallelism each rank noises only its own tokens, with the
lengths of the whole documents (they travel with the batch as a per-token tensor).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def noise_scale(document_lengths: torch.Tensor, hidden_size: int, alpha: float) -> torch.Tensor:
    """alpha / sqrt(L * d) per token; 0 where L is 0 (padding)."""
    lengths = document_lengths.to(torch.float32)
    scale = alpha / torch.sqrt(lengths.clamp(min=1.0) * hidden_size)
    return torch.where(lengths > 0, scale, torch.zeros_like(scale))


@contextmanager
def noisy_embeddings(
    model: nn.Module, document_lengths: torch.Tensor, alpha: float, generator: torch.Generator
) -> Iterator[None]:
    """Add NEFTune noise to the output of `model`'s input embeddings for the forwards inside."""
    embeddings = model.get_input_embeddings()

    def add_noise(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        scale = noise_scale(document_lengths.to(output.device), output.shape[-1], alpha)
        uniform = torch.rand(output.shape, generator=generator, device=output.device, dtype=torch.float32)
        return output + ((uniform * 2 - 1) * scale.unsqueeze(-1)).to(output.dtype)

    handle = embeddings.register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()

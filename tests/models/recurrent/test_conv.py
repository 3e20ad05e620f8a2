"""The document-restarting causal convolution equals the plain one on one document and, on a packed
row, each document convolved alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ulysses_pro.models.recurrent.conv import causal_conv_documents
from ulysses_pro.models.recurrent.documents import offsets_in_document


def _plain(x, weight, bias):
    """nn.Conv1d's causal depthwise convolution, as transformers' torch fallback computes it."""
    taps = weight.shape[-1]
    out = F.conv1d(x.transpose(1, 2), weight[:, None], bias, padding=taps - 1, groups=x.shape[-1])
    return out[..., : x.shape[1]].transpose(1, 2)


def test_offsets_restart_at_every_document():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert offsets_in_document(positions).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3], list(range(9))]


def test_conv_matches_plain_conv_and_restarts_at_documents():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    bias = torch.randn(6, generator=generator, dtype=torch.float64)
    lengths = [5, 2, 9]
    docs = [torch.randn(1, n, 6, generator=generator, dtype=torch.float64) for n in lengths]
    packed = torch.cat(docs, dim=1)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    out = causal_conv_documents(
        packed, weight, bias, offsets_in_document(positions), torch.nn.functional.silu
    )
    alone = torch.cat([F.silu(_plain(doc, weight, bias)) for doc in docs], dim=1)
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-12)
    # One document: the plain convolution; and the packed row differs from it (the leak it removes).
    whole = causal_conv_documents(packed, weight, bias, offsets_in_document(torch.arange(16)[None]), None)
    torch.testing.assert_close(whole, _plain(packed, weight, bias), rtol=0, atol=1e-12)
    assert (F.silu(whole) - out).abs().max() > 1e-2

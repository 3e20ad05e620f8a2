"""Causal depthwise (short) convolution that restarts at every document start.

A causal convolution of width K reads the K - 1 tokens before each token. In a packed row the first
K - 1 tokens of a document would read the end of the previous document: here each tap is masked by
the token's distance from its document's first token, so a packed document is convolved exactly as
it would be alone (zero history, as the model sees at the start of a sequence). The same
convolution with no document inside the row reduces to the plain causal convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv_documents(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    offsets: torch.Tensor,
    activation=None,
) -> torch.Tensor:
    """x (b, S, C), weight (C, K), bias (C,) or None, offsets (b, S) from `offsets_in_document`;
    returns activation(conv(x)) of shape (b, S, C) in x's dtype."""
    taps = weight.shape[-1]
    length = x.shape[1]
    channels_first = x.transpose(1, 2).to(weight.dtype)  # (b, C, S)
    history = F.pad(channels_first, (taps - 1, 0))
    out = None
    for lag in range(taps):
        # Tap K-1-lag multiplies the token `lag` steps back; it exists only inside the document.
        shifted = history[..., taps - 1 - lag : taps - 1 - lag + length]
        term = shifted * weight[:, taps - 1 - lag, None]
        if lag:
            term = term * (offsets >= lag).unsqueeze(1).to(term.dtype)
        out = term if out is None else out + term
    if bias is not None:
        out = out + bias[:, None]
    if activation is not None:
        out = activation(out)
    return out.transpose(1, 2).to(x.dtype)

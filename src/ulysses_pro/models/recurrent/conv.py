"""Causal depthwise (short) convolution that restarts at every document start.

A causal convolution of width K reads the K - 1 tokens before each token. In a packed row the first
K - 1 tokens of a document would read the end of the previous document: here each tap is masked by
the token's distance from its document's first token, so a packed document is convolved exactly as
it would be alone (zero history, as the model sees at the start of a sequence). The same
convolution with no document inside the row reduces to the plain causal convolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def conv_rows(
    conv: nn.Conv1d, rows: Callable[[], list[int]] | None, key: tuple
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (C', K), bias (C',) or None): the rows of a depthwise convolution this rank runs, all
    of them when `rows` is None. The index tensor is built once per layer, `key` (the split) and
    device, not in every forward (on CUDA that would be a host-to-device copy per layer)."""
    weight, bias = conv.weight.squeeze(1), conv.bias
    if rows is None:
        return weight, bias
    cache = conv.__dict__.setdefault("_ulysses_rows", {})
    index = cache.get(key)
    if index is None or index.device != weight.device:
        index = cache[key] = torch.tensor(rows(), dtype=torch.long, device=weight.device)
    return weight.index_select(0, index), bias.index_select(0, index) if bias is not None else None


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

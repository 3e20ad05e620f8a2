"""Gated short convolutions (LFM2, LFM2-MoE, LFM3): B * x, a causal depthwise convolution, times C.

Only the convolution mixes tokens, one channel at a time, so under SP it runs on the whole sequence
of 1/P of the channels (one all-to-all over the SP group, as the recurrent mixers here do) and
restarts at every document start; the gates and projections stay sequence-sharded.
"""

from __future__ import annotations

import torch
from torch import nn

from ...parallel.whole_sequence import gather_heads, scatter_heads
from .conv import causal_conv_documents
from .documents import MixerContext

CLASS_NAMES = ("Lfm2ShortConv", "Lfm2MoeShortConv", "Lfm3ShortConv")


def split_problem(module: nn.Module, sp_size: int) -> str | None:
    """Why this layer's channels cannot be split over `sp_size` ranks (None: they can)."""
    channels = module.conv.weight.shape[0]
    return (
        None
        if channels % sp_size == 0
        else f"its {channels} convolution channels do not split over {sp_size} ranks"
    )


def forward(module: nn.Module, hidden: torch.Tensor, context: MixerContext) -> torch.Tensor:
    """The layer's output for this rank's shard, exact for the whole sequence and its documents."""
    b, c, x = module.in_proj(hidden).chunk(3, dim=-1)
    layout = context.layout
    (whole,) = scatter_heads([(b * x).unsqueeze(-1)], layout, context.order)
    channels = whole.shape[2]
    first = layout.sp_rank * channels if context.sharded else 0
    weight = module.conv.weight.squeeze(1).narrow(0, first, channels)
    bias = module.conv.bias.narrow(0, first, channels) if module.conv.bias is not None else None
    mixed = causal_conv_documents(whole[..., 0], weight, bias, context.offsets)
    mixed = gather_heads(mixed.unsqueeze(-1), layout, context.order)[..., 0]
    return module.out_proj(c * mixed)

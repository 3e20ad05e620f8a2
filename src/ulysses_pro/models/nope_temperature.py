"""Llama 4's temperature tuning of NoPE layers, from the tokens' real positions.

Llama 4's layers without rotary embeddings scale each query by
`1 + attn_scale * log1p(floor((p + 1) / floor_scale))` (Nakanishi 2025, "Scalable-Softmax Is
Superior for Attention", arXiv:2501.19399). transformers computes p as `arange(sequence length)` of
the tensor the layer sees: under SP that is a shard, whose first token is not position 0, and in a
packed row it is the row, not the document. The SP attention function takes the query as the layer
made it and rescales it to the scale of the position ids (global under SP, restarting per packed
document): at SP=1 on an unpacked row the factor is exactly 1.
"""

from __future__ import annotations

import torch
from torch import nn


def tunes_temperature(module: nn.Module) -> bool:
    """A Llama 4 NoPE attention layer that scales its queries with the position."""
    return bool(getattr(module, "attn_temperature_tuning", False)) and not getattr(module, "use_rope", True)


def _scale(positions: torch.Tensor, module: nn.Module) -> torch.Tensor:
    return torch.log1p(torch.floor((positions.float() + 1.0) / module.floor_scale)) * module.attn_scale + 1.0


def retune_query(module: nn.Module, query: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """`query` (b, heads, s, d) scaled at the shard-local positions -> scaled at `position_ids` (b, s)."""
    local = torch.arange(query.shape[2], device=query.device)
    factor = _scale(position_ids.to(query.device), module) / _scale(local, module)
    return (query * factor[:, None, :, None]).to(query.dtype)

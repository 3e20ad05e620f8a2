"""Kimi Delta Attention (Kimi Linear): a gated delta rule whose decay is per channel, not per head.

The layer's projections (q, k, v, the forget gate and beta, and the output gate) are token-wise and
stay sequence-sharded; the causal convolution over the q/k/v channels and the chunked delta rule
work per head, so, as for Gated DeltaNet (`gated_deltanet.py`), one all-to-all over the SP group
gives each rank the whole sequence for 1/P of the heads (their channels of the convolution
weight, their per-channel decay), the convolution and the recurrence restart at every document
start, and the inverse all-to-all brings the heads back for the gated norm and the output projection.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ...parallel.whole_sequence import gather_heads, scatter_heads
from .conv import causal_conv_documents, conv_rows
from .documents import MixerContext
from .per_document import run_per_document

CLASS_NAMES = ("KimiLinearDeltaAttention",)


def split_problem(module: nn.Module, sp_size: int) -> str | None:
    """Why this layer's heads cannot be split over `sp_size` ranks (None: they can)."""
    if module.num_heads % sp_size:
        return (
            f"its {module.num_heads} delta-attention heads (linear_num_heads) do not split over "
            f"sequence_parallel_size={sp_size}"
        )
    return None


def _conv_rows(module: nn.Module, sp_size: int, sp_rank: int) -> list[int]:
    per_rank = module.qkv_dim // sp_size
    rows = range(sp_rank * per_rank, (sp_rank + 1) * per_rank)
    return [part * module.qkv_dim + row for part in range(3) for row in rows]


def forward(module: nn.Module, hidden: torch.Tensor, context: MixerContext) -> torch.Tensor:
    """The layer's output for this rank's shard, exact for the whole sequence and its documents."""
    from transformers.activations import ACT2FN

    batch, local = hidden.shape[:2]
    layout = context.layout
    sp_size, sp_rank = (layout.sp_size, layout.sp_rank) if context.sharded else (1, 0)
    shape = (batch, local, module.num_heads, module.head_dim)
    q, k, v = (proj(hidden).reshape(shape) for proj in (module.q_proj, module.k_proj, module.v_proj))
    g = module.forget_gate(hidden)  # (b, s, heads, head_dim): per-channel log decay
    beta = torch.sigmoid(module.b_proj(hidden))
    q, k, v, g, beta = scatter_heads([q, k, v, g, beta.unsqueeze(-1)], layout, context.order)
    length, heads = q.shape[1], q.shape[2]
    weight, bias = conv_rows(
        module.conv1d,
        (lambda: _conv_rows(module, sp_size, sp_rank)) if sp_size > 1 else None,
        (sp_size, sp_rank),
    )
    mixed = torch.cat([t.reshape(batch, length, -1) for t in (q, k, v)], dim=-1)
    mixed = causal_conv_documents(mixed, weight, bias, context.offsets, ACT2FN[module.activation])
    q, k, v = (t.reshape(batch, length, heads, module.head_dim) for t in mixed.chunk(3, dim=-1))
    rule = sys.modules[type(module).__module__].chunk_kimi_delta_attention

    def recurrence(q, k, v, g, beta):
        return rule(q, k, v, g=g, beta=beta, initial_state=None, use_qk_l2norm_in_kernel=True)[0]

    core = run_per_document(recurrence, [q, k, v, g, beta[..., 0]], context)
    core = gather_heads(core, layout, context.order)
    gate = module.g_b_proj(module.g_a_proj(hidden)).reshape(shape)
    return module.o_proj(module.o_norm(core, gate).reshape(batch, local, -1))

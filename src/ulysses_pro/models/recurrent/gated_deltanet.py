"""Gated DeltaNet (Yang et al. 2024, "Gated Delta Networks") under SP and across packed documents.

The layer of Qwen3-Next, Qwen3.5 and Qwen3.5-MoE: token-wise projections, a causal depthwise
convolution over the q/k/v channels, the chunked gated delta rule per value head, a gated RMS norm
and the output projection. Only the convolution and the delta rule mix tokens, and both work per
channel / per head, so under SP the layer's own projections stay sequence-sharded and an all-to-all
over the whole SP group hands each rank the whole sequence for 1/P of the heads (with the matching
rows of the convolution weight); the output comes back with the inverse all-to-all. Inside the
whole sequence the convolution and the recurrence restart at every document start, so a packed
document computes what it would alone (at SP=1 too). Ring and hybrid layouts change nothing here:
the exchange spans the SP group and restores global token order.

The value heads must split over the SP group; key heads that do not are sent once per value head
they serve (their channels of the convolution with them), which is exact because a convolution
channel and a head's recurrence do not depend on the other heads.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from ...parallel.whole_sequence import gather_heads, scatter_heads
from .conv import causal_conv_documents, conv_rows
from .documents import MixerContext
from .per_document import run_per_document

CLASS_NAMES = (
    "Qwen3NextGatedDeltaNet",
    "Qwen3_5GatedDeltaNet",
    "Qwen3_5MoeGatedDeltaNet",
    "OlmoHybridGatedDeltaNet",
)


def split_problem(module: nn.Module, sp_size: int) -> str | None:
    """Why this layer's heads cannot be split over `sp_size` ranks (None: they can)."""
    if module.num_v_heads % sp_size:
        return (
            f"its {module.num_v_heads} linear-attention value heads (linear_num_value_heads) do not split "
            f"over sequence_parallel_size={sp_size}"
        )
    return None


def _projections(module: nn.Module, hidden: torch.Tensor):
    """(q, k, v, z, b, a) of the layer's own projections, heads split, sequence-sharded."""
    batch, length = hidden.shape[:2]
    if hasattr(module, "in_proj_qkvz"):  # Qwen3-Next: interleaved per key-head group
        return module.fix_query_key_value_ordering(module.in_proj_qkvz(hidden), module.in_proj_ba(hidden))
    if hasattr(module, "g_proj"):  # OLMo-hybrid: separate projections, the output gate from g_proj
        return (
            module.q_proj(hidden).reshape(batch, length, -1, module.head_k_dim),
            module.k_proj(hidden).reshape(batch, length, -1, module.head_k_dim),
            module.v_proj(hidden).reshape(batch, length, -1, module.head_v_dim),
            module.g_proj(hidden).reshape(batch, length, -1, module.head_v_dim),
            module.b_proj(hidden),
            module.a_proj(hidden),
        )
    mixed = module.in_proj_qkv(hidden)
    q, k, v = torch.split(mixed, [module.key_dim, module.key_dim, module.value_dim], dim=-1)
    return (
        q.reshape(batch, length, -1, module.head_k_dim),
        k.reshape(batch, length, -1, module.head_k_dim),
        v.reshape(batch, length, -1, module.head_v_dim),
        module.in_proj_z(hidden).reshape(batch, length, -1, module.head_v_dim),
        module.in_proj_b(hidden),
        module.in_proj_a(hidden),
    )


def _conv_rows(module: nn.Module, sp_size: int, sp_rank: int, expand_keys: bool) -> list[int]:
    """Rows of the convolution weight for this rank's query, key and value channels, in the order
    the scattered channels are laid out."""
    dk, dv = module.head_k_dim, module.head_v_dim
    v_heads = range(sp_rank * module.num_v_heads // sp_size, (sp_rank + 1) * module.num_v_heads // sp_size)
    if expand_keys:
        group = module.num_v_heads // module.num_k_heads
        k_heads = [head // group for head in v_heads]
    else:
        k_heads = range(
            sp_rank * module.num_k_heads // sp_size, (sp_rank + 1) * module.num_k_heads // sp_size
        )
    q_rows = [head * dk + i for head in k_heads for i in range(dk)]
    k_rows = [module.key_dim + row for row in q_rows]
    v_rows = [2 * module.key_dim + head * dv + i for head in v_heads for i in range(dv)]
    return q_rows + k_rows + v_rows


def _delta_rule(module: nn.Module):
    """The family's own chunked gated delta rule (transformers' torch reference, or the
    flash-linear-attention kernel it dispatches to when installed)."""
    return sys.modules[type(module).__module__].torch_chunk_gated_delta_rule


def forward(module: nn.Module, hidden: torch.Tensor, context: MixerContext) -> torch.Tensor:
    """The layer's output for this rank's shard, exact for the whole sequence and its documents."""
    batch, local = hidden.shape[:2]
    layout = context.layout
    sp_size, sp_rank = (layout.sp_size, layout.sp_rank) if context.sharded else (1, 0)
    q, k, v, z, b, a = _projections(module, hidden)
    beta = b.sigmoid()
    if getattr(module, "allow_neg_eigval", False):
        beta = beta * 2.0  # OLMo-hybrid: eigenvalues of the state transition in [-1, 1]
    # As the layer computes it: fp32 decay, so an fp16 model cannot overflow exp(A_log).
    g = -module.A_log.float().exp() * F.softplus(a.float() + module.dt_bias)
    expand_keys = module.num_k_heads % sp_size != 0
    if expand_keys:
        group = module.num_v_heads // module.num_k_heads
        q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)
    q, k, v, g, beta = scatter_heads([q, k, v, g.unsqueeze(-1), beta.unsqueeze(-1)], layout, context.order)
    length = q.shape[1]
    split = sp_size > 1 or expand_keys
    weight, bias = conv_rows(
        module.conv1d,
        (lambda: _conv_rows(module, sp_size, sp_rank, expand_keys)) if split else None,
        (sp_size, sp_rank),
    )
    mixed = torch.cat([x.reshape(batch, length, -1) for x in (q, k, v)], dim=-1)
    from transformers.activations import ACT2FN

    mixed = causal_conv_documents(mixed, weight, bias, context.offsets, ACT2FN[module.activation])
    q_width = q.shape[2] * module.head_k_dim
    q, k, v = torch.split(mixed, [q_width, q_width, v.shape[2] * module.head_v_dim], dim=-1)
    q = q.reshape(batch, length, -1, module.head_k_dim)
    k = k.reshape(batch, length, -1, module.head_k_dim)
    v = v.reshape(batch, length, -1, module.head_v_dim)
    rule = _delta_rule(module)

    def recurrence(q, k, v, g, beta):
        return rule(q, k, v, g=g, beta=beta, initial_state=None, use_qk_l2norm_in_kernel=True)[0]

    core = run_per_document(recurrence, [q, k, v, g[..., 0], beta[..., 0]], context)
    core = gather_heads(core, layout, context.order)  # (b, s/P, Hv, dv)
    norm = getattr(module, "norm", None) or module.o_norm
    out_proj = getattr(module, "out_proj", None) or module.o_proj
    core = norm(core.reshape(-1, module.head_v_dim), z.reshape(-1, module.head_v_dim))
    return out_proj(core.reshape(batch, local, -1))

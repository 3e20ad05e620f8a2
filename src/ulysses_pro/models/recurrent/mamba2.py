"""Mamba-2 mixers (Dao & Gu 2024, state space duality) under SP and across packed documents.

The mixer of Bamba, Nemotron-H, Granite-MoE-hybrid, Zamba2, Falcon-H1 (with its muP multipliers)
and Mamba-2 itself: one token-wise input
projection into (gate, x, B, C, dt), a causal depthwise convolution over the x, B and C channels,
the chunked selective scan per head (B and C shared by the heads of a group), a gated RMS norm and
the output projection. As for Gated DeltaNet (`gated_deltanet.py`), the projections stay
sequence-sharded and one all-to-all over the SP group hands each rank the whole sequence of 1/P of
the heads, with the B/C groups those heads read and the matching convolution rows; the
convolution and the scan restart at every document start. When the groups do not split over the
SP group (Bamba and Granite use one group), each rank receives the group of its heads: the group
is sent once per rank that needs it, which is exact because the scan only reads it.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ...parallel.whole_sequence import gather_heads, scatter_heads
from .conv import causal_conv_documents, conv_rows
from .documents import MixerContext
from .per_document import run_per_document

CLASS_NAMES = (
    "BambaMixer",
    "FalconH1Mixer",
    "NemotronHMamba2Mixer",
    "GraniteMoeHybridMambaLayer",
    "Zamba2MambaMixer",
    "Mamba2Mixer",
)


def split_problem(module: nn.Module, sp_size: int) -> str | None:
    """Why this layer's heads or groups cannot be split over `sp_size` ranks (None: they can)."""
    heads, groups = module.num_heads, module.n_groups
    if heads % sp_size:
        return f"its {heads} Mamba heads do not split over sequence_parallel_size={sp_size}"
    if groups % sp_size and sp_size % groups:
        return f"its {groups} Mamba groups (n_groups) and sequence_parallel_size={sp_size}: neither divides the other"
    return None


def _rank_groups(module: nn.Module, sp_size: int, sp_rank: int) -> list[int]:
    """The B/C groups read by this rank's heads (heads of a group are contiguous)."""
    heads_per_group = module.num_heads // module.n_groups
    first, stop = sp_rank * module.num_heads // sp_size, (sp_rank + 1) * module.num_heads // sp_size
    return sorted({head // heads_per_group for head in range(first, stop)})


def _conv_rows(module: nn.Module, sp_size: int, sp_rank: int) -> list[int]:
    """Rows of the convolution weight for this rank's x, B and C channels, in scattered order."""
    d, n = module.head_dim, module.ssm_state_size
    per_rank = module.num_heads // sp_size
    heads = range(sp_rank * per_rank, (sp_rank + 1) * per_rank)
    groups = _rank_groups(module, sp_size, sp_rank)
    x_rows = [h * d + i for h in heads for i in range(d)]
    b_rows = [module.intermediate_size + g * n + i for g in groups for i in range(n)]
    c_rows = [
        module.intermediate_size + module.n_groups * n + row - module.intermediate_size for row in b_rows
    ]
    return x_rows + b_rows + c_rows


def _chunk_scan(module: nn.Module):
    """The family's own chunked scan (transformers' torch reference, or mamba_ssm's kernel)."""
    return sys.modules[type(module).__module__].mamba2_chunk_scan


def forward(module: nn.Module, hidden: torch.Tensor, context: MixerContext) -> torch.Tensor:
    """The mixer's output for this rank's shard, exact for the whole sequence and its documents."""
    batch, local = hidden.shape[:2]
    dtype = hidden.dtype
    layout = context.layout
    sp_size, sp_rank = (layout.sp_size, layout.sp_rank) if context.sharded else (1, 0)
    heads, d, groups, n = module.num_heads, module.head_dim, module.n_groups, module.ssm_state_size
    projected = module.in_proj(hidden * getattr(module, "ssm_in_multiplier", 1.0))
    if hasattr(module, "mup_vector"):  # Falcon-H1's muP scaling of the projection's parts
        projected = projected * module.mup_vector
    gate, xbc, dt = projected.split([module.intermediate_size, module.conv_dim, heads], dim=-1)
    x, b, c = xbc.split([module.intermediate_size, groups * n, groups * n], dim=-1)
    x, b, c = (
        x.reshape(batch, local, heads, d),
        b.reshape(batch, local, groups, n),
        c.reshape(batch, local, groups, n),
    )
    if groups % sp_size:
        # Fewer groups than ranks: rank u needs group u // (P / G); send each group to each of its ranks.
        b, c = (t.repeat_interleave(sp_size // groups, dim=2) for t in (b, c))
    x, b, c, dt = scatter_heads([x, b, c, dt.unsqueeze(-1)], layout, context.order)
    length = x.shape[1]
    weight, bias = conv_rows(
        module.conv1d,
        (lambda: _conv_rows(module, sp_size, sp_rank)) if sp_size > 1 else None,
        (sp_size, sp_rank),
    )
    mixed = torch.cat([t.reshape(batch, length, -1) for t in (x, b, c)], dim=-1)
    mixed = causal_conv_documents(mixed, weight, bias, context.offsets, module.act)
    local_heads, local_groups = x.shape[2], b.shape[2]
    x, b, c = mixed.split([local_heads * d, local_groups * n, local_groups * n], dim=-1)
    x = x.reshape(batch, length, local_heads, d)
    b, c = b.reshape(batch, length, local_groups, n), c.reshape(batch, length, local_groups, n)
    head_slice = slice(sp_rank * local_heads, (sp_rank + 1) * local_heads)
    a = -torch.exp(module.A_log.float())[head_slice]
    scan = _chunk_scan(module)

    def run(x, dt, b, c):
        return scan(
            x,
            dt,
            a,
            b,
            c,
            chunk_size=module.chunk_size,
            D=module.D[head_slice],
            dt_bias=module.dt_bias[head_slice],
            dt_softplus=True,
            dt_limit=module.time_step_limit,
        )

    out = run_per_document(run, [x, dt[..., 0], b, c], context)
    out = gather_heads(out.reshape(batch, length, local_heads, d), layout, context.order)
    out = out.reshape(batch, local, module.intermediate_size)
    if getattr(module, "mamba_rms_norm", True):
        out = module.norm(out, gate)
    else:  # Falcon-H1 without its gated norm
        out = out * torch.nn.functional.silu(gate)
    return module.out_proj(out.to(dtype))

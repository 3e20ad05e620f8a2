"""Mamba (Gu & Dao 2023) selective-scan mixers under SP and across packed documents: Jamba, Mamba,
Falcon-Mamba.

The layer projects into (x, gate), convolves x causally per channel, projects the convolved x of
*all* channels token by token into the time step, B and C (Jamba and Falcon-Mamba normalise them),
and scans every channel along the sequence with B and C shared by all channels. Two mixing steps
sit on either side of a channel-mixing projection, so under SP the exchange happens twice: x goes
to its channel slice of the whole sequence for the convolution and back to sequence shards for the
projection; then x, the time step and the gate go to their channel slice again (B and C, a few
values per token, to every rank) for the scan, whose output comes back before the output
projection. The convolution and the scan restart at every document start.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ...parallel.whole_sequence import gather_heads, scatter_heads
from .conv import causal_conv_documents, conv_rows
from .documents import MixerContext
from .per_document import run_per_document

CLASS_NAMES = ("JambaMambaMixer", "MambaMixer", "FalconMambaMixer")


def split_problem(module: nn.Module, sp_size: int) -> str | None:
    """Why this layer's channels cannot be split over `sp_size` ranks (None: they can)."""
    if module.intermediate_size % sp_size:
        return f"its {module.intermediate_size} Mamba channels do not split over sequence_parallel_size={sp_size}"
    return None


def _channel_slice(module: nn.Module, sp_size: int, sp_rank: int) -> slice:
    width = module.intermediate_size // sp_size
    return slice(sp_rank * width, (sp_rank + 1) * width)


def forward(module: nn.Module, hidden: torch.Tensor, context: MixerContext) -> torch.Tensor:
    """The mixer's output for this rank's shard, exact for the whole sequence and its documents."""
    batch, local = hidden.shape[:2]
    dtype = hidden.dtype
    layout, order = context.layout, context.order
    sp_size, sp_rank = (layout.sp_size, layout.sp_rank) if context.sharded else (1, 0)
    channels = _channel_slice(module, sp_size, sp_rank)
    x, gate = module.in_proj(hidden).chunk(2, dim=-1)
    (x_whole,) = scatter_heads([x.unsqueeze(-1)], layout, order)
    rows = (lambda: list(range(channels.start, channels.stop))) if sp_size > 1 else None
    weight, bias = conv_rows(module.conv1d, rows, (sp_size, sp_rank))
    x_whole = causal_conv_documents(x_whole[..., 0], weight, bias, context.offsets, module.act)
    x = gather_heads(x_whole.unsqueeze(-1), layout, order)[..., 0]  # (b, s, I): every channel again
    dt, b, c = torch.split(
        module.x_proj(x), [module.time_step_rank, module.ssm_state_size, module.ssm_state_size], dim=-1
    )
    if hasattr(module, "dt_layernorm"):  # Jamba and Falcon-Mamba normalise the time step, B and C
        dt, b, c = module.dt_layernorm(dt), module.b_layernorm(b), module.c_layernorm(c)
    dt = dt @ module.dt_proj.weight.t()  # (b, s, I); the bias is added inside the scan
    shared = [t.unsqueeze(2).expand(-1, -1, sp_size, -1) for t in (b, c)]  # every rank reads B and C
    dt_w, gate_w, b_w, c_w = scatter_heads([dt.unsqueeze(-1), gate.unsqueeze(-1), *shared], layout, order)
    scan = sys.modules[type(module).__module__].mamba_selective_scan
    a = -torch.exp(module.A_log.float())[channels]
    d = module.D.float()[channels]
    dt_bias = module.dt_proj.bias.float()[channels] if module.dt_proj.bias is not None else None

    def run(x, dt, z, b, c):
        # The scan's layout: x, dt, z (b, channels, s); B and C (b, state, s).
        out = scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            a,
            b.transpose(1, 2),
            c.transpose(1, 2),
            d,
            z=z.transpose(1, 2),
            delta_bias=dt_bias,
            delta_softplus=True,
        )
        return out.transpose(1, 2)

    out = run_per_document(run, [x_whole, dt_w[..., 0], gate_w[..., 0], b_w[:, :, 0], c_w[:, :, 0]], context)
    out = gather_heads(out.unsqueeze(-1), layout, order)[..., 0]
    return module.out_proj(out.to(dtype))

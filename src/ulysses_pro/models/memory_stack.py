"""The long-context memory stack a run gets, applied to the policy before SP is wired:
liger-kernel (optional), tiled MLP, gradient checkpointing (LLaMA-Factory's default) with optional
host offload, and the loss head's chunking (or liger's fused loss)."""

from __future__ import annotations

from torch import nn

from .checkpointing import enable_gradient_checkpointing
from .liger import apply_liger_kernel
from .memory import LossHead
from .tiled_mlp import tile_mlps


def apply_memory_stack(model: nn.Module, model_args, memory_args, *, training: bool) -> LossHead:
    """Configure `model` in place for training; returns how the loss head should run."""
    fused = apply_liger_kernel(model) if model_args.enable_liger_kernel else None
    if memory_args.tiled_mlp:
        tile_mlps(model, memory_args.tiled_mlp_tile_tokens)
    if training and not model_args.disable_gradient_checkpointing:
        enable_gradient_checkpointing(
            model,
            use_reentrant=model_args.use_reentrant_gc,
            offload=memory_args.gradient_checkpointing_offload,
        )
    return LossHead(chunk_tokens=memory_args.loss_chunk_tokens, fused=fused)

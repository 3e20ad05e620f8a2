"""The long-context memory stack a run gets, applied to the policy before SP is wired:
liger-kernel (optional), memory-efficient RMSNorm, tiled MLP, gradient checkpointing
(LLaMA-Factory's default) with optional host offload, and the loss head's chunking (or liger's
fused loss)."""

from __future__ import annotations

import logging

from torch import nn

from .checkpointing import enable_gradient_checkpointing
from .efficient_norm import use_efficient_rms_norms
from .liger import apply_liger_kernel
from .memory import LossHead
from .tiled_mlp import tile_mlps

logger = logging.getLogger(__name__)


def _zero3() -> bool:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def apply_memory_stack(
    model: nn.Module, model_args, memory_args, *, training: bool, preserve_rng_state: bool = True
) -> LossHead:
    """Configure `model` in place for training; returns how the loss head should run.

    (`preserve_rng_state=False` is for the planner's meta-device trace, which has no RNG to keep.)"""
    fused = apply_liger_kernel(model) if model_args.enable_liger_kernel else None
    if training and memory_args.efficient_rms_norm and not model_args.enable_liger_kernel:
        if _zero3():
            # The weights are partitions already (zero.Init), so the bit-for-bit check of the forward
            # against the module cannot run: keep the model's own norm there.
            logger.info("memory-efficient RMSNorm off under DeepSpeed ZeRO-3")
        else:
            use_efficient_rms_norms(model)  # liger's fused RMSNorm already keeps as little
    if memory_args.tiled_mlp:
        tile_mlps(model, memory_args.tiled_mlp_tile_tokens)
    if training and not model_args.disable_gradient_checkpointing:
        enable_gradient_checkpointing(
            model,
            use_reentrant=model_args.use_reentrant_gc,
            offload=memory_args.gradient_checkpointing_offload,
            preserve_rng_state=preserve_rng_state,
        )
    return LossHead(chunk_tokens=memory_args.loss_chunk_tokens, fused=fused)

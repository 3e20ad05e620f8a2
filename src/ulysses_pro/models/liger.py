"""`enable_liger_kernel: true`: liger-kernel's fused RMSNorm, SwiGLU and RoPE on the model, and its
fused linear cross-entropy as the loss head (when the release back-propagates per-token losses).

liger-kernel is an optional CUDA accelerator (Triton): the config check stops a run that asks for it
where it is missing or no GPU is visible; it is never accepted and ignored.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re

from torch import nn

from .wrappers import unwrap_model

logger = logging.getLogger(__name__)

# Per-token (reduction="none") gradients of the fused linear cross-entropy are right from 0.8.2 on.
FUSED_LOSS_SINCE = (0, 8, 2)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def apply_liger_kernel(model: nn.Module):
    """Patch the decoder's layers with liger's kernels; returns the fused loss function or None."""
    transformers_api = importlib.import_module("liger_kernel.transformers")
    hf_model = unwrap_model(model)
    # Cross-entropy stays ours: the loss head must return per-token losses for SP normalisation.
    transformers_api._apply_liger_kernel_to_instance(
        model=hf_model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    version = _version(importlib.metadata.version("liger-kernel"))
    if version < FUSED_LOSS_SINCE:
        logger.warning(
            "liger-kernel %s: fused RMSNorm/SwiGLU/RoPE on; its per-token fused cross-entropy needs >= %s, "
            "so the tiled loss head stays",
            ".".join(map(str, version)),
            ".".join(map(str, FUSED_LOSS_SINCE)),
        )
        return None
    functional = importlib.import_module("liger_kernel.transformers.functional")

    def fused(hidden, weight, targets, bias, softcap, reduction):
        return functional.liger_fused_linear_cross_entropy(
            hidden, weight, targets, bias, ignore_index=-100, reduction=reduction, softcap=softcap
        )

    logger.info("liger-kernel: fused RMSNorm, SwiGLU, RoPE and linear cross-entropy on")
    return fused

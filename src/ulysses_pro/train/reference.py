"""The frozen reference policy of DPO-family and KTO losses.

Three sources, cheapest first:
- LoRA: the policy itself with its adapters disabled (no second copy of the weights);
- `ref_model`: a separately loaded model, frozen;
- full / freeze fine-tuning: a frozen copy of the policy taken before training starts (under
  ZeRO-3, where the policy holds only partitions, the model is loaded again and partitioned; under
  FSDP2 the copy is sharded like the policy, `train/workflow.py`).
The reference always runs the same attention implementation as the policy, so under SP it is
split and gathered exactly like the policy.

A frozen copy holds the weights as loaded, in the run's compute dtype: the loader upcast the
policy's trainable weights to fp32 for their optimizer, which a model that never trains has no use
for (an fp32 copy of an 8B model is 32 GB per GPU, and without autocast it would compute in fp32 on
the slow kernels). The loaded values were compute-dtype numbers, so casting back is lossless: the
copy equals the model `ref_model` or LLaMA-Factory's reference would load. It is scored under the
policy's autocast, so its matmuls run as the policy's do.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator

import torch
from torch import nn

from ..engines.fsdp2 import is_sharded
from ..models.attention import share_sequence_parallel
from ..models.wrappers import unwrap_engine, unwrap_model

logger = logging.getLogger(__name__)


def _peft_model(model: nn.Module) -> nn.Module | None:
    model = unwrap_engine(model)
    return model if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") else None


class ReferenceModel:
    """Gives the module that scores the reference log-probs (always under no_grad, in eval mode)."""

    def __init__(self, frozen: nn.Module | None = None, autocast_dtype: torch.dtype | None = None):
        self.frozen = frozen
        self.autocast_dtype = autocast_dtype  # the policy's mixed precision (None: none)
        if frozen is not None:
            frozen.requires_grad_(False)
            frozen.eval()

    @classmethod
    def build(
        cls,
        policy: nn.Module,
        loaded: nn.Module | None = None,
        compute_dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
    ) -> ReferenceModel:
        """`loaded` (from `ref_model`) if given; else adapters-off for LoRA; else a frozen copy in
        `compute_dtype` (the dtype the loader loaded in)."""
        if loaded is not None:
            share_sequence_parallel(loaded, policy)
            logger.info("reference model: ref_model")
            return cls(loaded, autocast_dtype)
        if _peft_model(policy) is not None:
            logger.info("reference model: the policy with its LoRA adapters disabled")
            return cls(None)
        logger.info("reference model: a frozen copy of the initial policy in %s", compute_dtype)
        return cls(in_compute_dtype(copy.deepcopy(unwrap_model(policy)), compute_dtype), autocast_dtype)

    def to(self, device) -> ReferenceModel:
        # A DeepSpeed engine and FSDP2 have placed their partitions already.
        placed = hasattr(self.frozen, "zero_optimization_stage") or is_sharded(self.frozen)
        if self.frozen is not None and not placed:
            self.frozen.to(device)
        return self

    @contextlib.contextmanager
    def scoring(self, policy: nn.Module) -> Iterator[nn.Module]:
        """The module to run for reference scores; for LoRA, the policy with adapters off."""
        if self.frozen is not None:
            device_type = next(self.frozen.parameters()).device.type
            enabled = self.autocast_dtype is not None and torch.amp.is_autocast_available(device_type)
            with torch.autocast(device_type, dtype=self.autocast_dtype, enabled=enabled):
                yield self.frozen
            return
        peft = _peft_model(policy)
        was_training = peft.training
        peft.eval()  # no adapter dropout; the base model has none to begin with
        try:
            with peft.disable_adapter():
                yield peft
        finally:
            peft.train(was_training)


def in_compute_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The fp32 parameters of a frozen copy back in `dtype`, but for the modules the model class
    keeps in fp32 (transformers' `_keep_in_fp32_modules`); buffers (rotary frequencies) as they are."""
    if dtype == torch.float32:
        return model
    kept = [
        *(getattr(model, "_keep_in_fp32_modules", None) or ()),
        *(getattr(model, "_keep_in_fp32_modules_strict", None) or ()),
    ]
    # A kept entry names whole dotted components of a parameter's name, as transformers matches it.
    keeps = re.compile("|".join(rf"(^|\.){re.escape(module)}($|\.)" for module in kept)) if kept else None
    for name, param in model.named_parameters():
        if param.dtype == torch.float32 and not (keeps and keeps.search(name)):
            param.data = param.data.to(dtype)
    return model


def partitioned_for_inference(model: nn.Module, training_args) -> nn.Module:
    """Wrap a ZeRO-3-partitioned reference in a DeepSpeed engine without an optimizer, so its forward
    gathers each layer's weights as the policy's does (TRL prepares its reference the same way)."""
    import deepspeed

    config = {
        # Required by DeepSpeed's config checks; nothing is trained through this engine.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": bool(training_args.bf16)},
        "fp16": {"enabled": bool(training_args.fp16)},
    }
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine

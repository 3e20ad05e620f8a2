"""Gradient checkpointing of the decoder layers, as LLaMA-Factory enables it, plus host offload.

LLaMA-Factory checkpoints every decoder layer unless `disable_gradient_checkpointing: true`, with
`use_reentrant_gc` (default true) choosing torch's reentrant implementation, skips layers without
trainable parameters, and marks the layer input as requiring grad so reentrant checkpointing also
works when the embeddings are frozen (LoRA). The same rules hold here.

`gradient_checkpointing_offload: true` (ours) also moves what each checkpoint keeps (the layer
input, `batch x seq x hidden` per layer) to pinned host memory, asynchronously on CUDA, and brings
it back when backward recomputes that layer (as DeepSpeed's ALST does). The tensors checkpointing
saves pass through `torch.autograd.graph.saved_tensors_hooks` for both implementations (the
reentrant function saves its inputs with `save_for_backward`; the non-reentrant one with a no-op
autograd function before it starts recording), so one pair of hooks around the checkpoint call
catches exactly the checkpointed inputs. The values are copied, never changed: results are
identical with and without offload.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .wrappers import unwrap_model

logger = logging.getLogger(__name__)


class HostOffload:
    """saved_tensors_hooks pair: floating tensors go to (pinned) host memory and come back on use."""

    def __init__(self) -> None:
        self.offloaded_bytes = 0  # running total, for logs and tests

    def pack(self, tensor: torch.Tensor):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            return tensor
        if tensor.device.type == "meta":  # the planner's trace: nothing stays on the "device"
            self.offloaded_bytes += tensor.numel() * tensor.element_size()
            return tensor.device, tensor.requires_grad, (tensor.shape, tensor.dtype)
        pinned = tensor.is_cuda and torch.cuda.is_available()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pinned)
        host.copy_(tensor, non_blocking=pinned)
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        return tensor.device, tensor.requires_grad, host

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, requires_grad, host = packed
        if isinstance(host, tuple):  # the planner's meta trace: the copy comes back for backward
            shape, dtype = host
            return torch.empty(shape, dtype=dtype, device=device).requires_grad_(requires_grad)
        restored = host.to(device, non_blocking=host.is_pinned())
        return restored.requires_grad_(requires_grad) if restored.is_leaf else restored


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _owner(function) -> nn.Module | None:
    target = function.func if isinstance(function, partial) else function
    return getattr(target, "__self__", None)


def checkpointing_function(use_reentrant: bool, offload: HostOffload | None, preserve_rng_state: bool = True):
    """The `_gradient_checkpointing_func` transformers calls per layer: `(layer_call, *args)`."""

    def checkpointed(function, *args, **kwargs):
        module = _owner(function)
        if not torch.is_grad_enabled() or (module is not None and not _trainable(module)):
            return function(*args, **kwargs)  # nothing to differentiate (reference scoring, frozen layer)
        if use_reentrant:
            for arg in args:  # the hidden states: reentrant checkpointing needs an input that wants grad
                if isinstance(arg, torch.Tensor) and arg.is_floating_point():
                    if not arg.requires_grad and arg.is_leaf:
                        arg.requires_grad_(True)
                    break
        options = {"use_reentrant": use_reentrant, "preserve_rng_state": preserve_rng_state}
        if offload is None:
            return checkpoint(function, *args, **options, **kwargs)
        with torch.autograd.graph.saved_tensors_hooks(offload.pack, offload.unpack):
            return checkpoint(function, *args, **options, **kwargs)

    return checkpointed


def enable_gradient_checkpointing(
    model: nn.Module, *, use_reentrant: bool = True, offload: bool = False, preserve_rng_state: bool = True
) -> HostOffload | None:
    """Checkpoint every trainable decoder layer; returns the offload hooks when offloading."""
    hf_model = unwrap_model(model)
    if not getattr(hf_model, "supports_gradient_checkpointing", False):
        logger.warning(
            "%s does not support gradient checkpointing; training without it", type(hf_model).__name__
        )
        return None
    hooks = HostOffload() if offload else None
    hf_model._set_gradient_checkpointing(
        enable=True,
        gradient_checkpointing_func=checkpointing_function(use_reentrant, hooks, preserve_rng_state),
    )
    hf_model.config.use_cache = False
    logger.info(
        "gradient checkpointing on (%s%s)",
        "reentrant" if use_reentrant else "non-reentrant",
        ", layer inputs offloaded to host memory" if offload else "",
    )
    return hooks

"""Gradient checkpointing of the decoder layers, as LLaMA-Factory enables it, plus host offload.

LLaMA-Factory checkpoints every decoder layer unless `disable_gradient_checkpointing: true`, with
`use_reentrant_gc` (default true) choosing torch's reentrant implementation, skips layers without
trainable parameters, and marks the layer input as requiring grad so reentrant checkpointing also
works when the embeddings are frozen (LoRA). The same rules hold here.

`gradient_checkpointing_offload: true` (ours) also moves what each checkpoint keeps (the layer
input, `batch x seq x hidden` per layer) to pinned host memory, on a side stream on CUDA, and
brings it back ahead of the backward that recomputes that layer (as DeepSpeed's ALST does). The tensors checkpointing
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

from .kv_cache import set_kv_cache
from .wrappers import unwrap_model

logger = logging.getLogger(__name__)


class _Saved:
    """One offloaded tensor: its host copy, and (once prefetched) its copy back on the device."""

    __slots__ = ("device", "requires_grad", "host", "previous", "fetched", "ready")

    def __init__(self, device: torch.device, requires_grad: bool, host, previous: _Saved | None):
        self.device, self.requires_grad, self.host, self.previous = device, requires_grad, host, previous
        self.fetched: torch.Tensor | None = None  # the prefetched device copy
        self.ready = None  # CUDA event recorded after the prefetch copy


class HostOffload:
    """saved_tensors_hooks pair: floating tensors go to (pinned) host memory and come back on use.

    On CUDA both copies run on a side stream, so they overlap the layers' compute instead of
    queueing behind it: the copy out waits only for the kernels that produced the tensor (and keeps
    its memory alive until copied, `record_stream`); backward consumes the saved tensors in reverse
    order, so unpacking one layer's input starts the copy back of the input packed before it (the
    next layer backward recomputes), and the compute stream waits for that copy only when it needs
    it. On the CPU the copies are plain and the same schedule runs (`prefetched` counts its hits).
    """

    def __init__(self) -> None:
        self.offloaded_bytes = 0  # running total, for logs and tests
        self.prefetched = 0  # unpacks served by a copy started ahead of need
        self._last: _Saved | None = None
        self._stream = None  # CUDA side stream, made on first use

    def _side_stream(self, device: torch.device):
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return self._stream

    def pack(self, tensor: torch.Tensor):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            return tensor
        if tensor.device.type == "meta":  # the planner's trace: nothing stays on the "device"
            self.offloaded_bytes += tensor.numel() * tensor.element_size()
            return tensor.device, tensor.requires_grad, (tensor.shape, tensor.dtype)
        on_gpu = tensor.is_cuda and torch.cuda.is_available()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=on_gpu)
        if on_gpu:
            stream = self._side_stream(tensor.device)
            stream.wait_stream(torch.cuda.current_stream(tensor.device))
            with torch.cuda.stream(stream):
                host.copy_(tensor, non_blocking=True)
            tensor.record_stream(stream)
        else:
            host.copy_(tensor)
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        self._last = _Saved(tensor.device, tensor.requires_grad, host, self._last)
        return self._last

    def _prefetch(self, saved: _Saved | None) -> None:
        if saved is None or saved.fetched is not None or saved.host is None:
            return
        if saved.device.type == "cuda" and torch.cuda.is_available():
            stream = self._side_stream(saved.device)
            with torch.cuda.stream(stream):
                saved.fetched = saved.host.to(saved.device, non_blocking=True)
                saved.ready = stream.record_event()
        else:
            saved.fetched = saved.host.to(saved.device)

    def unpack(self, packed):
        if isinstance(packed, torch.Tensor):
            return packed
        if isinstance(packed, tuple):  # the planner's meta trace: the copy comes back for backward
            device, requires_grad, (shape, dtype) = packed
            return torch.empty(shape, dtype=dtype, device=device).requires_grad_(requires_grad)
        saved: _Saved = packed
        if saved.fetched is not None:
            restored, saved.fetched = saved.fetched, None
            self.prefetched += 1
            if saved.ready is not None:
                current = torch.cuda.current_stream(saved.device)
                current.wait_event(saved.ready)
                restored.record_stream(current)
        elif saved.device.type == "cuda" and torch.cuda.is_available():
            current = torch.cuda.current_stream(saved.device)
            current.wait_stream(self._side_stream(saved.device))  # the copy out has finished
            restored = saved.host.to(saved.device, non_blocking=True)
        else:
            restored = saved.host.to(saved.device)
        # Backward goes in reverse order: the tensor packed before this one is needed next.
        previous, saved.previous = saved.previous, None
        self._prefetch(previous)
        return restored.requires_grad_(saved.requires_grad) if restored.is_leaf else restored


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _owner(function) -> nn.Module | None:
    """The layer behind transformers' checkpointed call: a bound method, or (transformers 5.25's
    `GradientCheckpointingLayer`) `partial(forward, layer, **kwargs)` of the plain function."""
    target = function.func if isinstance(function, partial) else function
    owner = getattr(target, "__self__", None)
    if owner is None and isinstance(function, partial) and function.args and isinstance(function.args[0], nn.Module):
        owner = function.args[0]
    return owner


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
    set_kv_cache(hf_model, False)
    logger.info(
        "gradient checkpointing on (%s%s)",
        "reentrant" if use_reentrant else "non-reentrant",
        ", layer inputs offloaded to host memory" if offload else "",
    )
    return hooks

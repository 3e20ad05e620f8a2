"""Tiled MLP: each decoder layer's MLP runs over sequence tiles and is recomputed tile by tile in
backward, so its intermediates (gate, up, activation: 3-4 x intermediate_size per token) never
exist for the whole local sequence (the idea of DeepSpeed's ALST TiledMLP, Bekman et al. 2025).

A dense MLP is token-wise, so tiling is exact (only the GEMM shapes change). The autograd function
takes the MLP's trainable parameters as inputs and returns their gradients summed over tiles, so
DDP / FSDP see one gradient per parameter, as for an ordinary module. The recompute in backward
runs under the autocast state of the forward.

Under DeepSpeed ZeRO-3 a parameter is an empty partition outside its module's forward, gathered by
hooks on each submodule call; its gradient is reduce-scattered by ZeRO's own hook when it arrives.
There the backward lets autograd put each tile's gradient into ZeRO's buffers instead
(`torch.autograd.backward` over the tile's recompute, which fires the gathering hooks), and tells
ZeRO not to reduce until the last tile (`ds_grad_is_ready`, the flag DeepSpeed's own ALST TiledMLP
uses for the same purpose).
"""

from __future__ import annotations

import logging
import types

import torch
from torch import nn

from .wrappers import unwrap_model

logger = logging.getLogger(__name__)


class _TiledMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mlp_forward, tile_tokens, autocast, x, *params):
        ctx.mlp_forward, ctx.tile_tokens, ctx.autocast = mlp_forward, tile_tokens, autocast
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return _tiles_no_grad(mlp_forward, x, tile_tokens)

    @staticmethod
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        device_type, enabled, dtype = ctx.autocast
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[3] else None
        grad_params = [torch.zeros_like(p) for p in params]
        for start in range(0, x.shape[1], ctx.tile_tokens):
            piece = x[:, start : start + ctx.tile_tokens].detach().requires_grad_(grad_x is not None)
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                out = ctx.mlp_forward(piece)
            wanted = ([piece] if grad_x is not None else []) + list(params)
            grads = torch.autograd.grad(
                out, wanted, grad_out[:, start : start + ctx.tile_tokens], allow_unused=True
            )
            if grad_x is not None:
                grad_x[:, start : start + ctx.tile_tokens] = grads[0]
                grads = grads[1:]
            for total, grad in zip(grad_params, grads):
                if grad is not None:
                    total += grad
        return (None, None, None, grad_x, *grad_params)


class _TiledMLPPartitioned(torch.autograd.Function):
    """ZeRO-3's variant: only x is an input; the parameters' gradients reach ZeRO through autograd."""

    @staticmethod
    def forward(ctx, mlp_forward, tile_tokens, autocast, params, x):
        ctx.mlp_forward, ctx.tile_tokens, ctx.autocast, ctx.params = mlp_forward, tile_tokens, autocast, params
        ctx.save_for_backward(x)
        with torch.no_grad():
            return _tiles_no_grad(mlp_forward, x, tile_tokens)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        device_type, enabled, dtype = ctx.autocast
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[4] else None
        starts = range(0, x.shape[1], ctx.tile_tokens)
        try:
            for index, start in enumerate(starts):
                last = index == len(starts) - 1
                for param in ctx.params:  # ZeRO reduces a gradient once, after the last tile's
                    param.ds_grad_is_ready = last
                piece = x[:, start : start + ctx.tile_tokens].detach().requires_grad_(grad_x is not None)
                with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                    out = ctx.mlp_forward(piece)
                torch.autograd.backward(out, grad_out[:, start : start + ctx.tile_tokens])
                if grad_x is not None:
                    grad_x[:, start : start + ctx.tile_tokens] = piece.grad
        finally:
            for param in ctx.params:
                param.ds_grad_is_ready = True
        return (None, None, None, None, grad_x)


def _is_mixture_of_experts(mlp: nn.Module) -> bool:
    name = type(mlp).__name__.lower()
    return "moe" in name or "sparse" in name or hasattr(mlp, "experts")


def tile_mlps(model: nn.Module, tile_tokens: int) -> int:
    """Route the forward of every decoder layer's dense `mlp` through the tiled one; returns how many.

    The module stays in place (its parameters keep their names for checkpoints and adapters).
    Mixture-of-experts blocks are left alone: their routers record per-call statistics.
    """
    if tile_tokens < 1:
        raise ValueError(f"tiled_mlp_tile_tokens must be >= 1, got {tile_tokens}")
    count, skipped = 0, 0
    for module in unwrap_model(model).modules():
        mlp = getattr(module, "mlp", None)
        if not isinstance(mlp, nn.Module) or getattr(mlp, "_ulysses_tiled", False):
            continue
        if _is_mixture_of_experts(mlp):
            skipped += 1
            continue
        # The current forward (liger-kernel may have patched the instance) runs tile by tile.
        mlp._ulysses_plain_forward = mlp.forward
        mlp._ulysses_tile_tokens = tile_tokens
        mlp.forward = types.MethodType(_tiled_forward, mlp)
        mlp._ulysses_tiled = True
        count += 1
    if skipped:
        logger.warning(
            "tiled MLP skips %d mixture-of-experts blocks (their routers see every token at once)", skipped
        )
    logger.info("tiled MLP on %d layers (%d tokens per tile)", count, tile_tokens)
    return count


def _tiled_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # A method bound to its module (not a closure over it), so a deep copy of the model (DPO's frozen
    # reference) runs over the *copy's* weights.
    plain, tile_tokens = self._ulysses_plain_forward, self._ulysses_tile_tokens
    if x.shape[1] <= tile_tokens:
        return plain(x)
    if not torch.is_grad_enabled():
        return _tiles_no_grad(plain, x, tile_tokens)
    params = [p for p in self.parameters() if p.requires_grad]
    autocast = _autocast_state(x.device.type)
    if any(hasattr(p, "ds_id") for p in self.parameters()):  # ZeRO-3 partitions (module docstring)
        return _TiledMLPPartitioned.apply(plain, tile_tokens, autocast, params, x)
    return _TiledMLP.apply(plain, tile_tokens, autocast, x, *params)


def _autocast_state(device_type: str) -> tuple:
    if not torch.amp.is_autocast_available(device_type):  # e.g. the planner's meta tensors
        return ("cpu", False, torch.bfloat16)
    return (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))


def _tiles_no_grad(plain, x: torch.Tensor, tile_tokens: int) -> torch.Tensor:
    """The MLP over sequence tiles, written into one output (tile intermediates freed as it goes)."""
    out = None
    for start in range(0, x.shape[1], tile_tokens):
        piece = plain(x[:, start : start + tile_tokens])
        if not isinstance(piece, torch.Tensor):
            raise TypeError("tiled_mlp supports dense MLPs that return one tensor")
        if out is None:
            out = torch.empty((*x.shape[:2], *piece.shape[2:]), dtype=piece.dtype, device=piece.device)
        out[:, start : start + tile_tokens] = piece
    return out

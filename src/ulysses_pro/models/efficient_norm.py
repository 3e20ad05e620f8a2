"""RMSNorm that keeps only its input and one scale per token for backward.

Hugging Face's RMSNorm is written as plain tensor ops, so autograd keeps the normalised tensor
(`batch x seq x hidden`) on top of the input it already holds; this function recomputes it in
backward from the input and the per-token reciprocal RMS instead (the memory saving liger-kernel's
fused RMSNorm makes on GPUs, here in plain torch for every device). The forward is the module's
own arithmetic, op for op, and is checked bit for bit against the module before it is swapped in.
The backward is the analytic gradient of that forward.
"""

from __future__ import annotations

import logging
import types

import torch
from torch import nn

from .wrappers import unwrap_model

logger = logging.getLogger(__name__)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offset):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.offset = offset
        return _scale(xf * rstd, x, weight, offset)

    @staticmethod
    def backward(ctx, grad_out):
        # Written out (not autograd over the forward) so that at most three token x hidden
        # temporaries exist at once: the recomputed normalised input, the gradient being built
        # in place, and one product for the reductions.
        x, weight, rstd = ctx.saved_tensors
        normed = x.float() * rstd
        grad_weight = None
        if ctx.offset:  # out = (normed * (1 + w)).type_as(x)
            if weight.requires_grad:
                grad_weight = _sum_to(grad_out.float() * normed, weight)
            grad = grad_out.float() * (1.0 + weight.float())
        else:  # out = w * normed.to(x.dtype)
            if weight.requires_grad:
                grad_weight = _sum_to(grad_out * normed.to(x.dtype), weight)
            grad = (grad_out * weight).float()
        # d normed / d x for normed = x * rsqrt(mean(x^2) + eps): rstd * (g - normed * mean(g * normed))
        dot = (grad * normed).mean(-1, keepdim=True)
        grad = grad.sub_(normed.mul_(dot)).mul_(rstd)
        return grad.to(x.dtype), grad_weight, None, None


def _sum_to(product: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return product.reshape(-1, product.shape[-1]).sum(0).to(weight.dtype)


def _scale(normed: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, offset: bool) -> torch.Tensor:
    if offset:  # Gemma: normalise and weight in fp32, then cast back
        return (normed * (1.0 + weight.float())).type_as(x)
    return weight * normed.to(x.dtype)  # Llama, Qwen, Mistral, Phi-3: cast back, then weight


def _eps(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def _candidate(module: nn.Module) -> bool:
    return (
        type(module).__name__.endswith("RMSNorm")
        # A parameter: weightless norms (Falcon-Mamba's) keep a dummy buffer of another width.
        and isinstance(getattr(module, "weight", None), nn.Parameter)
        and _eps(module) is not None
        and "forward" not in module.__dict__
    )


def _efficient_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # A method bound to its module (not a closure over it), so a deep copy of the model (DPO's frozen
    # reference) gets a forward over the *copy's* weight.
    return _RMSNorm.apply(x, self.weight, self._ulysses_eps, self._ulysses_offset)


def _matches(module: nn.Module, forward) -> bool:
    generator = torch.Generator().manual_seed(0)
    weight = module.weight
    if weight.numel() == 0:
        return False  # a partition (ZeRO-3): nothing to compare against
    if weight.device.type == "meta":
        # The planner's skeleton has no values to compare: Gemma's families weight by (1 + w).
        return module._ulysses_offset == ("Gemma" in type(module).__name__)
    probe = torch.randn(2, 3, weight.shape[-1], generator=generator).to(weight.device, weight.dtype)
    with torch.no_grad():
        return torch.equal(forward(probe), module(probe))


def use_efficient_rms_norms(model: nn.Module) -> int:
    """Swap every RMSNorm whose arithmetic this reproduces exactly; returns how many were swapped."""
    swapped, kinds = 0, set()
    for module in unwrap_model(model).modules():
        if not _candidate(module):
            continue
        module._ulysses_eps = _eps(module)
        forward = types.MethodType(_efficient_forward, module)
        for offset in (False, True):
            module._ulysses_offset = offset
            if _matches(module, forward):
                module.forward = forward
                swapped += 1
                kinds.add(type(module).__name__)
                break
    if swapped:
        logger.info("memory-efficient RMSNorm on %d modules (%s)", swapped, ", ".join(sorted(kinds)))
    return swapped

"""Reaching the Hugging Face model inside engine and adapter wrappers."""

from __future__ import annotations

from torch import nn


def unwrap_engine(model: nn.Module) -> nn.Module:
    """The module inside DDP/FSDP/DeepSpeed `.module` wrappers (a PEFT model stays wrapped)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The innermost Hugging Face model, through DDP/FSDP `.module` and PEFT wrappers."""
    model = unwrap_engine(model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model

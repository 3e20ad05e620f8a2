"""LoRA+ (Hayou, Ghosh and Yu, 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"): the
LoRA B matrices learn `loraplus_lr_ratio` times faster than A. Groups as LLaMA-Factory forms them:
A matrices and every other trainable matrix at the base rate; B matrices and 1-D parameters at
ratio x the base rate (without weight decay where transformers would not decay them); LoRA
embedding B matrices at `loraplus_lr_embedding`."""

from __future__ import annotations

from torch import nn


def loraplus_param_groups(
    model: nn.Module,
    learning_rate: float,
    ratio: float,
    embedding_lr: float,
    weight_decay: float,
    decay_names: list[str],
) -> list[dict]:
    """Optimizer parameter groups; empty groups are left out."""
    fast = learning_rate * ratio
    groups: dict[str, list] = {"a": [], "b": [], "b_nodecay": [], "embedding": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_embedding_B" in name:
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["b" if name in decay_names else "b_nodecay"].append(param)
        else:
            groups["a"].append(param)
    settings = {
        "a": (learning_rate, weight_decay),
        "b": (fast, weight_decay),
        "b_nodecay": (fast, 0.0),
        "embedding": (embedding_lr, weight_decay),
    }
    return [
        {"params": params, "lr": settings[key][0], "weight_decay": settings[key][1]}
        for key, params in groups.items()
        if params
    ]

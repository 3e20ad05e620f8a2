"""LLaMA-Factory's vocabulary keys: `add_tokens` / `add_special_tokens` (comma-separated) extend the
tokenizer, and `resize_vocab` (implied by either) grows the embeddings to the tokenizer, each new row
initialised to the mean of the old rows plus noise of std 1/sqrt(dim) (LLaMA-Factory's noisy-mean
initialisation), padded to a multiple of 64 rows."""

from __future__ import annotations

import math

import torch
from torch import nn


def _names(value: str | None) -> list[str]:
    return [token.strip() for token in (value or "").split(",") if token.strip()]


def extend_tokenizer(tokenizer, model_args) -> int:
    """Add the configured tokens; the number the vocabulary grew by."""
    before = len(tokenizer)
    if _names(model_args.add_tokens):
        tokenizer.add_tokens(_names(model_args.add_tokens), special_tokens=False)
    if _names(model_args.add_special_tokens):
        # Special: never split by the tokenizer, dropped by skip_special_tokens when decoding.
        tokenizer.add_tokens(_names(model_args.add_special_tokens), special_tokens=True)
    return len(tokenizer) - before


def wants_resize(model_args) -> bool:
    return bool(
        model_args.resize_vocab or _names(model_args.add_tokens) or _names(model_args.add_special_tokens)
    )


def _noisy_mean(weight: torch.Tensor, new_rows: int, generator: torch.Generator) -> None:
    mean = weight[:-new_rows].mean(dim=0, keepdim=True)
    noise = torch.randn(new_rows, weight.shape[1], generator=generator, dtype=torch.float32) / math.sqrt(
        weight.shape[1]
    )
    weight[-new_rows:] = (mean.float() + noise.to(weight.device)).to(weight.dtype)


def embedding_rows(model: nn.Module) -> int:
    """Rows of the input embedding (its full size also when ZeRO-3 holds only a partition)."""
    weight = model.get_input_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


def resize_embeddings(model: nn.Module, tokenizer, seed: int) -> int:
    """Grow the input (and an untied output) embedding to the tokenizer; the rows added."""
    old_rows = embedding_rows(model)
    if len(tokenizer) <= old_rows:
        return 0
    if hasattr(model.get_input_embeddings().weight, "ds_shape"):
        raise ValueError(
            "resize_vocab under DeepSpeed ZeRO-3 is not supported; resize without ZeRO-3 and export first"
        )
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)
    new_rows = model.get_input_embeddings().weight.shape[0] - old_rows
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _noisy_mean(model.get_input_embeddings().weight.data, new_rows, generator)
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            _noisy_mean(output.weight.data, new_rows, generator)
    return new_rows


def embedding_module_names(model: nn.Module) -> list[str]:
    """The short names of the input and output embedding modules (trained in full with LoRA when
    the vocabulary grew, as LLaMA-Factory does)."""
    targets = [model.get_input_embeddings(), model.get_output_embeddings()]
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if any(module is t for t in targets)
        }
    )

"""Wires sequence-parallel attention into Hugging Face decoders through transformers' registry.

The model code is untouched: `apply_sequence_parallel` registers one attention function with
`AttentionInterface` and switches the model to it. Without a registered mask function transformers
passes `attention_mask=None`; masking (causal + packed documents) comes from the global position
ids every shard carries, so the model's own mask construction is never needed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

from torch import nn

from ..parallel.hybrid import full_sequence_metadata, sequence_parallel_attention
from ..parallel.mesh import SequenceParallelLayout
from .wrappers import unwrap_model

ATTENTION_NAME = "ulysses_pro_sp"


class _SegmentCache:
    """Document ids of the full sequence, all-gathered once per forward rather than once per layer.

    Every layer of one forward (and its checkpointed recomputation) receives the same position-id
    tensor object; a weak reference to it is the key, so a new batch can never hit a stale entry
    even if its tensor reuses the old one's memory. All ranks of an SP group run the same layers
    on the same call pattern, so they hit and miss (and so all-gather) together.
    """

    def __init__(self, layout: SequenceParallelLayout):
        self.layout = layout
        self.key: weakref.ref | None = None
        self.segments = None

    def __call__(self, position_ids):
        if self.key is not None and self.key() is position_ids:
            return self.segments
        segments = full_sequence_metadata(position_ids, self.layout)
        self.key, self.segments = weakref.ref(position_ids), segments
        return segments


def _attention_function(layout: SequenceParallelLayout):
    segments_of = _SegmentCache(layout)

    def attention(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
    ):
        if dropout and module.training:
            raise ValueError(
                "attention dropout is not supported with sequence parallelism; set attention_dropout: 0"
            )
        if kwargs.get("softcap"):
            raise ValueError(
                "attention logit soft-capping (Gemma 2) is not supported with sequence parallelism"
            )
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            raise ValueError("sequence-parallel attention needs position_ids (the trainer passes them)")
        window = kwargs.get("sliding_window")
        full_length = query.shape[2] * layout.sp_size
        if window is not None and window < full_length:
            raise ValueError(
                f"sliding-window attention (window {window} < sequence {full_length}) is not supported with "
                "sequence parallelism; use a model without sliding windows or shorter sequences"
            )
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        segments = segments_of(position_ids).expand(query.shape[0], -1)
        out = sequence_parallel_attention(query, key, value, None, layout, scale, segments=segments)
        return out.transpose(1, 2).contiguous(), None

    return attention


def apply_sequence_parallel(model: nn.Module, layout: SequenceParallelLayout) -> str:
    """Route the model's attention through SP attention; returns the implementation it replaced."""
    from transformers import AttentionInterface

    hf_model = unwrap_model(model)
    previous = hf_model.config._attn_implementation
    AttentionInterface.register(ATTENTION_NAME, _attention_function(layout))
    hf_model.set_attn_implementation(ATTENTION_NAME)
    return previous


def unregister_sequence_parallel() -> None:
    """Take our function out of transformers' global attention registry."""
    from transformers import AttentionInterface

    AttentionInterface._global_mapping.pop(ATTENTION_NAME, None)


def remove_sequence_parallel(model: nn.Module, implementation: str) -> None:
    """Put back the attention implementation `apply_sequence_parallel` replaced."""
    unwrap_model(model).set_attn_implementation(implementation)


@contextlib.contextmanager
def unsharded_attention(model: nn.Module, implementation: str | None) -> Iterator[None]:
    """Temporarily use ordinary attention (e.g. to generate samples on one rank)."""
    if implementation is None:
        yield
        return
    current = unwrap_model(model).config._attn_implementation
    remove_sequence_parallel(model, implementation)
    try:
        yield
    finally:
        unwrap_model(model).set_attn_implementation(current)


def attention_heads(model: nn.Module) -> tuple[int, int]:
    """(query heads, KV heads) of the decoder."""
    config = unwrap_model(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads


__all__ = [
    "apply_sequence_parallel",
    "attention_heads",
    "remove_sequence_parallel",
    "unregister_sequence_parallel",
    "unsharded_attention",
]

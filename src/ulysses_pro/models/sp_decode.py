"""Decoding with the model sharded over the SP group: the prompt prefilled under SP attention, each
rank keeping its shard's keys and values, decoded tokens kept round-robin, every decoding step's
attention merged across the ranks (`parallel.decode`).

`ShardedKVCache` is the per-call cache; `decode_attention(layout, cache)` is the attention function
(registered with transformers' `AttentionInterface` as `DECODE_NAME` for the call). In the prefill
phase it stores the keys and values its shard's tokens made (after rotary embedding, as the layer
passes them) with whether each is a prompt token (padding to the split unit is not), then attends
as training does. In the decoding phase the model runs on one token per row, the same on every rank
(the layers' own projections, norms and MLPs are per token): the rank that owns the step stores its
key and value, and each rank attends over its part of the cache. So no rank holds the whole
sequence's cache or activations, and the step's output is exact.

Only plain causal attention is decoded this way (`decode_problem` names what is not).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..parallel.decode import merge_over_group, merge_partials, partial_attention
from ..parallel.mesh import SequenceParallelLayout
from .attention import sequence_parallel_attention_function
from .recurrent import recurrent_mixers
from .recurrent.documents import CONTEXT_KEY
from .wrappers import unwrap_model

DECODE_NAME = "ulysses_pro_sp_decode"


def decode_problem(model: nn.Module) -> str | None:
    """Why this model's attention cannot decode from a sharded cache (None: it can)."""
    hf_model = unwrap_model(model)
    config = hf_model.config.get_text_config()
    if recurrent_mixers(hf_model):
        return "its recurrent layers (Gated DeltaNet / Mamba) carry a state, not a KV cache"
    if getattr(hf_model.config, "vision_config", None) is not None:
        return "it is a vision-language model"
    layer_types = set(getattr(config, "layer_types", None) or [])
    if layer_types - {"full_attention"} or getattr(config, "attention_chunk_size", None):
        return f"its layers {sorted(layer_types - {'full_attention'})} attend within windows or chunks"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "its sliding-window attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "its attention score soft-capping"
    if any(hasattr(module, "sinks") for module in hf_model.modules()):
        return "its attention sinks"
    return None


class ShardedKVCache:
    """This rank's keys and values of one prompt (prefilled for one row) and of the tokens decoded
    after it for `rows` completions."""

    def __init__(self, layout: SequenceParallelLayout, prompt_length: int):
        self.layout, self.prompt_length = layout, prompt_length
        self.decoding = False
        self.step = 0  # decoded tokens so far (the step's token is position prompt_length + step)
        self.prompt: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.generated: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.filled = 0
        self.rows = self.capacity = 0

    def start_decoding(self, rows: int, max_steps: int) -> None:
        self.decoding, self.rows = True, rows
        self.capacity = math.ceil(max_steps / self.layout.sp_size)

    @property
    def owns_step(self) -> bool:
        return self.step % self.layout.sp_size == self.layout.sp_rank

    def advance(self) -> None:
        if self.owns_step:
            self.filled += 1
        self.step += 1

    def store_prompt(self, layer: int, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor) -> None:
        self.prompt[layer] = (key, value, positions < self.prompt_length)

    def store_step(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        if layer not in self.generated:
            shape = (self.rows, key.shape[1], self.capacity)
            self.generated[layer] = (
                key.new_empty(*shape, key.shape[-1]),
                value.new_empty(*shape, value.shape[-1]),
            )
        keys, values = self.generated[layer]
        keys[:, :, self.filled] = key[:, :, 0]
        values[:, :, self.filled] = value[:, :, 0]

    def parts(self, layer: int, filled: int):
        """(key, value, valid) of each part of this rank's cache for `layer`."""
        out = []
        if layer in self.prompt:
            out.append(self.prompt[layer])
        if filled and layer in self.generated:
            keys, values = self.generated[layer]
            out.append((keys[:, :, :filled], values[:, :, :filled], None))
        return out

    def bytes(self) -> int:
        """What this rank's cache holds, in bytes."""
        tensors = [t for part in self.prompt.values() for t in part[:2]]
        tensors += [t for part in self.generated.values() for t in part]
        return sum(t.numel() * t.element_size() for t in tensors)


def decode_attention(layout: SequenceParallelLayout, cache: ShardedKVCache):
    """The attention function of one sharded decoding call (see the module docstring)."""
    prefill = sequence_parallel_attention_function(layout)

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        layer = module.layer_idx
        if not cache.decoding:
            positions = kwargs.get("position_ids")
            if positions is None:  # a family that does not pass them down: the forward's context has them
                positions = kwargs[CONTEXT_KEY].position_ids
            cache.store_prompt(layer, key, value, positions)
            # The forward's mixer context was built for this implementation, not SP attention's, so
            # it holds this shard's documents only: SP attention gathers the positions itself.
            kwargs = {**kwargs, "position_ids": positions}
            kwargs.pop(CONTEXT_KEY, None)
            return prefill(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        filled = cache.filled
        if cache.owns_step:
            cache.store_step(layer, key, value)
            filled += 1
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        parts = [partial_attention(query, k, v, scale, valid) for k, v, valid in cache.parts(layer, filled)]
        if not parts:
            empty = key[:, :, :0]
            parts = [partial_attention(query, empty, value[:, :, :0], scale)]
        out, lse = merge_partials(parts)
        out = merge_over_group(out, lse, layout.sp_group)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None

    return attention

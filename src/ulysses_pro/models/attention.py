"""Wires sequence-parallel attention into Hugging Face decoders through transformers' registry.

The model code is untouched: `apply_sequence_parallel` registers one attention function with
`AttentionInterface` and switches the model to it. Without a registered mask function transformers
passes `attention_mask=None`; masking (causal + packed documents) comes from the global position
ids every shard carries, so the model's own mask construction is never needed. A forward pre-hook
refuses a forward without `position_ids`: transformers would fill in a shard-local `arange`, and
every shard would silently attend as a document of its own with local rotary positions.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from ..parallel.hybrid import sequence_parallel_attention
from ..parallel.mesh import SequenceParallelLayout, init_sequence_parallel
from ..parallel.plan import AttentionPlan, DocumentLayout, gather_documents, plan_for
from .multimodal.vision_inputs import install_vision_inputs, vision_language_model
from .nope_temperature import retune_query, tunes_temperature
from .recurrent import install_recurrent_mixers
from .recurrent.documents import CONTEXT_KEY
from .wrappers import unwrap_model

ATTENTION_NAME = "ulysses_pro_sp"

# Families whose own attention lets packed documents see each other (transformers 5.25): AfMoE,
# GPT-OSS and Granite-MoE-hybrid build their masks without the position ids; Llama 4 scales its NoPE
# queries by the position in the row, not in the document. Packed, they attend through SP attention.
PACKED_THROUGH_SP_ATTENTION = frozenset({"afmoe", "gpt_oss", "granitemoehybrid", "llama4", "llama4_text"})


class _PlanCache:
    """The attention plans of the full sequence, built once per forward (and window or chunk size)
    rather than once per layer.

    Every layer of one forward (and its checkpointed recomputation) receives the same position-id
    tensor object; a weak reference to it is the key, so a new batch can never hit a stale entry
    even if its tensor reuses the old one's memory. All ranks of an SP group run the same layers
    on the same call pattern, so they hit and miss (and so all-gather) together. The document
    layout is gathered once per forward; each window size (Gemma 3 alternates sliding and full
    layers) and chunk size (Llama 4 alternates chunked and full) gets its own plan from it, without
    communication.
    """

    def __init__(self, layout: SequenceParallelLayout):
        self.layout = layout
        self.key: weakref.ref | None = None
        self.batch = 0
        self.documents: DocumentLayout | None = None
        self.plans: dict[tuple[int | None, int | None], AttentionPlan] = {}

    def __call__(
        self,
        position_ids: torch.Tensor,
        batch: int,
        window: int | None = None,
        context=None,
        chunk: int | None = None,
    ) -> AttentionPlan:
        if self.key is None or self.key() is not position_ids or self.batch != batch:
            # The forward's mixer context holds the same documents (hybrids read them once).
            documents = context.document_layout if context is not None else None
            self.documents = documents or gather_documents(position_ids, self.layout, batch=batch)
            self.key, self.batch, self.plans = weakref.ref(position_ids), batch, {}
        if (window, chunk) not in self.plans:
            documents = self.documents.in_chunks(chunk) if chunk else self.documents
            self.plans[window, chunk] = plan_for(documents, self.layout, window)
        return self.plans[window, chunk]


def _chunk_size(module: nn.Module) -> int | None:
    """The chunk of a chunked-attention layer (Llama 4's RoPE layers), None on other layers."""
    config, index = getattr(module, "config", None), getattr(module, "layer_idx", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None or index is None or layer_types[index] != "chunked_attention":
        return None
    return getattr(config, "attention_chunk_size", None)


def kernel_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k and v in the one dtype the kernels compute in: autocast's when it is on, else their
    common type.

    Under bf16 autocast with trainable fp32 embeddings (full fine-tuning, LoRA with trained
    embeddings) the rotary cos/sin are fp32, so the rotated q and k come out fp32 beside a bf16 v;
    kernel choice follows q, and fp32 would take the tiled reference instead of a flash kernel (and
    double the all-to-all bytes). transformers' flash path casts back the same way, and SDPA under
    autocast computes in the autocast dtype.
    """
    device_type = query.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def _attention_function(layout: SequenceParallelLayout):
    plan_of = _PlanCache(layout)

    def attention(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
    ):
        if getattr(module, "is_causal", True) is False:
            # An encoder inside the model (a VLM's vision tower) attends within one image or video,
            # whole on the rank that encodes it (models/multimodal): not split, PyTorch's SDPA.
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=False
            )
        if dropout and module.training:
            raise ValueError(
                "attention dropout is not supported with sequence parallelism; set attention_dropout: 0"
            )
        position_ids = kwargs.get("position_ids")
        context = kwargs.get(CONTEXT_KEY)
        if position_ids is None and context is not None:
            position_ids = context.position_ids  # a family that does not pass them down
        if context is not None and context.position_ids is not position_ids:
            context = None  # not this layer's positions: plan from its own
        if position_ids is None:
            raise ValueError("sequence-parallel attention needs position_ids (the trainer passes them)")
        # This layer's window (None on full-attention layers) and Gemma 2's score cap.
        window = kwargs.get("sliding_window")
        window = int(window) if window is not None and window < query.shape[2] * layout.sp_size else None
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        plan = plan_of(position_ids, query.shape[0], window, context, _chunk_size(module))
        if tunes_temperature(module):
            query = retune_query(module, query, position_ids)
        softcap = float(kwargs.get("softcap") or 0.0)
        query, key, value = kernel_dtype(query, key, value)
        value_dim = value.shape[-1]
        if value_dim != query.shape[-1]:
            # MLA (DeepSeek) values are narrower than queries and keys; the kernels want one head
            # size, and zero value channels only add zero output channels.
            value = torch.nn.functional.pad(value, (0, query.shape[-1] - value_dim))
        out = sequence_parallel_attention(
            query, key, value, None, layout, scale, plan=plan, softcap=softcap, sinks=kwargs.get("s_aux")
        )
        # (b, s, heads, d), contiguous as transformers' own functions return it (some families .view it);
        # free when the output came back through the ulysses all-to-all.
        return out[..., :value_dim].transpose(1, 2).contiguous(), None

    return attention


def sequence_parallel_attention_function(layout: SequenceParallelLayout):
    """A fresh SP attention function for `layout` (what `apply_sequence_parallel` registers), for
    code that attends as training does inside a function of its own (`sp_decode`)."""
    return _attention_function(layout)


POSITION_IDS_HELP = (
    "a sequence-parallel forward needs position_ids: the global positions of this shard's tokens "
    "(restarting at 0 per packed document). Put position_ids (torch.arange(seq_len) per row) in the "
    "batch before split_for_sequence_parallel and pass the shard's batch['position_ids'] to the model; "
    "without them transformers uses a shard-local arange and every shard silently attends as its own "
    "document with local rotary positions"
)


def _require_position_ids(module: nn.Module, args: tuple, kwargs: dict) -> None:
    if module.config._attn_implementation != ATTENTION_NAME:
        return  # SP switched off (e.g. generation under unsharded_attention)
    positional = list(inspect.signature(module.forward).parameters)
    given = kwargs.get("position_ids")
    if given is None and "position_ids" in positional:
        index = positional.index("position_ids")
        given = args[index] if index < len(args) else None
    if given is None:
        raise ValueError(POSITION_IDS_HELP)


def apply_sequence_parallel(model: nn.Module, layout: SequenceParallelLayout) -> str:
    """Route the model's attention through SP attention; returns the implementation it replaced."""
    from transformers import AttentionInterface

    hf_model = unwrap_model(model)
    previous = hf_model.config._attn_implementation
    AttentionInterface.register(ATTENTION_NAME, _attention_function(layout))
    hf_model.set_attn_implementation(ATTENTION_NAME)
    if not getattr(hf_model, "_ulysses_position_ids_hook", None):
        hf_model._ulysses_position_ids_hook = hf_model.register_forward_pre_hook(
            _require_position_ids, with_kwargs=True
        )
    hf_model._ulysses_layout = _SharedLayout(layout)
    install_recurrent_mixers(hf_model, layout, ATTENTION_NAME)
    return previous


class _SharedLayout:
    """The policy's layout, kept on the model for models wired like it; a deep copy of the model
    (DPO's frozen reference) shares it, as process groups cannot be copied."""

    def __init__(self, layout: SequenceParallelLayout):
        self.layout = layout

    def __deepcopy__(self, memo) -> _SharedLayout:
        return self


def isolate_packed_documents(model: nn.Module) -> str | None:
    """Without SP, make packed documents train as if alone: recurrent mixers restart at every document
    (`models/recurrent`); a family whose own attention does not separate them (GPT-OSS's masks,
    Llama 4's NoPE temperature) attends through SP attention on a one-rank layout, which reads the documents
    from the position ids (transformers' attention does that itself for the others). Returns the attention implementation replaced, if any."""
    hf_model = unwrap_model(model)
    if getattr(hf_model.config, "model_type", None) in PACKED_THROUGH_SP_ATTENTION:
        heads, kv_heads = attention_heads(hf_model)
        return apply_sequence_parallel(
            hf_model, init_sequence_parallel(1, num_heads=heads, num_kv_heads=kv_heads)
        )
    install_recurrent_mixers(hf_model, None, ATTENTION_NAME)
    return None


def share_sequence_parallel(model: nn.Module, policy: nn.Module) -> None:
    """Run `model` (a reference or reward model loaded beside the policy) the way the policy runs:
    its attention implementation, and its mixers on the policy's SP layout."""
    hf_policy = unwrap_model(policy)
    unwrap_model(model).set_attn_implementation(hf_policy.config._attn_implementation)
    shared = getattr(hf_policy, "_ulysses_layout", None)
    install_recurrent_mixers(unwrap_model(model), shared.layout if shared else None, ATTENTION_NAME)
    if getattr(vision_language_model(hf_policy), "_ulysses_vision_hook", None) is not None:
        install_vision_inputs(unwrap_model(model), shared.layout if shared else None)


def unregister_sequence_parallel() -> None:
    """Take our function out of transformers' global attention registry."""
    from transformers import AttentionInterface

    AttentionInterface._global_mapping.pop(ATTENTION_NAME, None)


def remove_sequence_parallel(model: nn.Module, implementation: str) -> None:
    """Put back the attention implementation `apply_sequence_parallel` replaced."""
    hf_model = unwrap_model(model)
    hf_model.set_attn_implementation(implementation)
    hook = getattr(hf_model, "_ulysses_position_ids_hook", None)
    if hook is not None:
        hook.remove()
        hf_model._ulysses_position_ids_hook = None


@contextlib.contextmanager
def unsharded_attention(model: nn.Module, implementation: str | None) -> Iterator[None]:
    """Temporarily use ordinary attention (e.g. to generate samples on one rank)."""
    if implementation is None:
        yield
        return
    current = unwrap_model(model).config._attn_implementation
    unwrap_model(model).set_attn_implementation(implementation)
    try:
        yield
    finally:
        unwrap_model(model).set_attn_implementation(current)


def attention_heads(model_or_config) -> tuple[int, int] | None:
    """(query heads, KV heads) of the decoder; None for a decoder without attention (Mamba)."""
    config = getattr(unwrap_model(model_or_config), "config", model_or_config)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        return None
    return heads, getattr(config, "num_key_value_heads", None) or heads


__all__ = [
    "apply_sequence_parallel",
    "isolate_packed_documents",
    "share_sequence_parallel",
    "attention_heads",
    "remove_sequence_parallel",
    "unregister_sequence_parallel",
    "unsharded_attention",
]

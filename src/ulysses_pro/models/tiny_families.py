"""A tiny random config of *any* causal-LM family transformers registers, from its own config class.

`tiny.py` hand-tunes nine families for the quickstart and the unit tests; this module covers the rest,
so that the family sweep (`tests/models/test_family_sweep.py`) and users (`tiny:qwen3_next`,
`ulysses-pro make-tiny-model --arch jamba`) can build a model of every family without a download.

The family's default config is shrunk key by key: every size the config has (hidden size, heads,
experts, linear-attention and Mamba heads, MLA ranks, ...) gets a small value, every dropout is 0, and
the layer pattern (`layer_types` and its relatives) keeps one layer of each kind the family mixes, so a
4-layer hybrid still has both its recurrent and its attention layers. A few families need values that
only make sense together (Mamba's inner width = heads x head size); `FAMILY_OVERRIDES` holds those.
Windows and chunks are shrunk to 16 / 32 tokens so that they bite at test lengths.
"""

from __future__ import annotations

from typing import Any

# Sizes set on every config that has the key (through its attribute_map too: GPT-2's n_embd).
GENERIC_SIZES: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    # mixture of experts
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32,
    "shared_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    # linear attention (Gated DeltaNet, Kimi delta attention)
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_heads": 4,
    "linear_head_dim": 16,
    # multi-head latent attention (DeepSeek): v_head_dim differs from the query/key head size on purpose
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    # Mamba / Mamba-2 mixers (inner width = expand x hidden = heads x head size = 128)
    "mamba_n_heads": 8,
    "mamba_num_heads": 8,
    "mamba_d_head": 16,
    "mamba_head_dim": 16,
    "mamba_d_state": 16,
    "ssm_state_size": 16,
    "mamba_n_groups": 2,
    "mamba_expand": 2,
    "mamba_chunk_size": 16,
    "mamba_d_ssm": 128,
    "max_position_embeddings": 4096,
}

# Keys whose non-None default is shrunk so that the mechanism acts inside a short test sequence.
WINDOW_SIZES: dict[str, int] = {"sliding_window": 16, "attention_chunk_size": 32}

# Keys that must be 0 for an exact comparison: dropout (refused by preflight for attention) and the
# router noise of PhiMoE-style experts, both random per token.
DROPOUT_MARKERS = ("dropout", "pdrop", "jitter")

FAMILY_OVERRIDES: dict[str, dict[str, Any]] = {
    "mamba2": {
        "num_heads": 8,
        "head_dim": 16,
        "state_size": 16,
        "n_groups": 2,
        "expand": 2,
        "chunk_size": 16,
    },
    "nemotron_h": {"n_groups": 2, "expand": 2, "chunk_size": 16},
    "jamba": {
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
    },
    "lfm2": {"layer_types": ["conv", "full_attention", "conv", "full_attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv", "full_attention"]},
    "zamba2": {
        "n_mamba_heads": 8,
        "mamba_ngroups": 2,
        "chunk_size": 16,
        "adapter_rank": 8,
        # Both names: the config derives hybrid_layer_ids from one and keeps the other.
        "layer_types": ["linear_attention", "hybrid", "linear_attention", "hybrid"],
        "layers_block_type": ["linear_attention", "hybrid", "linear_attention", "hybrid"],
    },
    "falcon_mamba": {"state_size": 16, "expand": 2},
    "bamba": {"attn_layer_indices": [1, 3]},
    "llama4_text": {"floor_scale": 8},  # NoPE temperature tuning from position 7, not 8191
    "falcon_h1": {
        "ssm_in_multiplier": 0.5,
        "ssm_multipliers": [0.5, 2.0, 0.25, 1.5, 0.75],
    },  # scalings that act
    "granitemoehybrid": {
        "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"]
    },
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1},
    "deepseek_v2": {"num_experts_per_tok": 2},
    "gpt_neo": {"attention_types": [[["global", "local"], 2]], "window_size": 16},
    # KV sharing: the last two layers reuse the cache of the first sliding / full pair
    "gemma3n_text": {
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "num_kv_shared_layers": 2,
        "hidden_size_per_layer_input": 16,
        "laurel_rank": 8,
        "altup_num_inputs": 2,
        "activation_sparsity_pattern": [0.0, 0.0, 0.0, 0.0],
    },
    "gemma4_text": {
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "global_head_dim": 32,  # full layers have wider heads
        "hidden_size_per_layer_input": 16,
    },
    "mamba": {"state_size": 16, "expand": 2},
}


# Keys set even where the family's default is None (None means "derive it", e.g. head_dim from the
# hidden size, which would not match the small head count).
NULLABLE_SIZES = ("head_dim", "num_key_value_heads")


def _settable(default, key: str) -> bool:
    """Whether the tiny config should set `key`: the family has it as a size, and it is not a
    read-only property the config derives (Falcon's head_dim, Jamba's layer_types)."""
    if isinstance(getattr(type(default), key, None), property) and getattr(type(default), key).fset is None:
        return False
    try:
        current = getattr(default, key)
    except AttributeError:
        return False
    except Exception:  # a per-layer attribute (Gemma 4): read the global value
        current = default.to_dict().get(key)
    if current is None:
        return key in NULLABLE_SIZES
    return isinstance(current, int) and not isinstance(current, bool)


def _layer_pattern(default: list, layers: int) -> list:
    """The first `layers` entries of a family's layer pattern, with every kind it mixes kept:
    kinds missing from the prefix replace its last entries (Gemma 3's five sliding layers to one
    full layer become sliding, sliding, sliding, full)."""
    pattern = list(default[:layers])
    missing = [kind for kind in dict.fromkeys(default) if kind not in pattern]
    for offset, kind in enumerate(reversed(missing[:layers])):
        pattern[layers - 1 - offset] = kind
    return pattern


def _settable_list(default, key: str) -> bool:
    """A layer pattern can be set unless the config derives it (Bamba's and Jamba's come from
    their attention-layer indices; `layer_types` may alias a read-only `layers_block_type`)."""
    for name in (key, "layers_block_type"):
        attribute = getattr(type(default), name, None)
        if isinstance(attribute, property) and attribute.fset is None:
            return False
    return True


def tiny_family_kwargs(
    model_type: str, vocab_size: int, *, pad_token_id: int = 0, eos_token_id: int = 2, **overrides: Any
) -> dict[str, Any]:
    """The config keyword arguments of a tiny `model_type` (read off its default config); the
    special ids default to the built-in tokenizer's (bos = eos: some families insist on an int)."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    kwargs: dict[str, Any] = {}
    for key, value in GENERIC_SIZES.items():
        if _settable(default, key):
            kwargs[key] = value
    for key, value in WINDOW_SIZES.items():
        if _settable(default, key) and getattr(default, key) is not None:
            kwargs[key] = value
    if "qk_rope_head_dim" in kwargs and "head_dim" in kwargs:
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]  # MLA families rotate head_dim = the rope part
    if "kv_lora_rank" in kwargs and "num_key_value_heads" in kwargs:
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]  # MLA expands its latent to every head
    if _settable(default, "rotary_dim"):
        kwargs["rotary_dim"] = 8  # GPT-J / CodeGen rotate the first rotary_dim channels of a head
    for key, value in default.to_dict().items():
        if any(marker in key for marker in DROPOUT_MARKERS) and isinstance(value, float) and value:
            kwargs[key] = 0.0
    layers = overrides.get("num_hidden_layers", kwargs.get("num_hidden_layers", 4))
    pattern = getattr(default, "layer_types", None)
    if isinstance(pattern, list) and pattern and _settable_list(default, "layer_types"):
        kwargs["layer_types"] = _layer_pattern(pattern, layers)
    if _settable(default, "vocab_size_per_layer_input"):
        kwargs["vocab_size_per_layer_input"] = vocab_size  # Gemma 3n / 4 per-layer embeddings
    kwargs.update(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=bool(getattr(default, "tie_word_embeddings", False)),
    )
    kwargs.update(FAMILY_OVERRIDES.get(model_type, {}))
    kwargs.update(overrides)
    return kwargs


def causal_lm_model_types() -> frozenset[str]:
    """Every model type transformers maps to a causal-LM class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def build_family_config(model_type: str, vocab_size: int, **overrides: Any):
    """A tiny config of `model_type`'s own config class (fp32, sdpa where the family has it)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **tiny_family_kwargs(model_type, vocab_size, **overrides))
    config.dtype = "float32"
    return config

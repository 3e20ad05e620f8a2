"""Tiny random decoder models built locally from transformers' real config classes (no hub access).

They serve two purposes: fast tests that exercise the real modeling code of each supported family, and
a quickstart model small enough (~1M parameters) to fine-tune in a couple of minutes on two CPU cores.

Sliding-window attention is off by default in every family (full causal attention everywhere), so a test
sees windows only when it asks for them: a ``sliding_window`` override (``tiny:mistral?sliding_window=16``,
``tiny:gemma3?sliding_window=16&sliding_window_pattern=2`` for alternating layers) turns them on, and
``attn_logit_softcapping`` turns on Gemma 2's score cap. How each family is kept full by default in
transformers 5.23:

* mistral defaults to ``sliding_window=4096``; ``None`` selects the plain causal mask.
* qwen2 / qwen3 turn it off with ``use_sliding_window=False`` (their config then stores ``None``).
* gemma2 alternates sliding and full layers by default and *always* builds a sliding mask (it raises if
  ``sliding_window`` is ``None``), so we declare every layer ``full_attention`` and keep the window at
  ``max_position_embeddings`` (a window that large can never bite anyway).
* gemma2 also softcaps attention scores (tanh, default 50). SDPA and the ring merge kernels cannot apply
  that, and transformers refuses ``sdpa`` for gemma2 altogether, so gemma2 runs ``eager`` and we default
  ``attn_logit_softcapping=None``; the final-logit softcap (on the lm head output, outside attention) is
  kept at the family default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

from .tiny_families import build_family_config, causal_lm_model_types
from .tokenizer import load_builtin_tokenizer

TINY_ARCHES: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "mistral",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
)

_CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "qwen3_moe": Qwen3MoeConfig,
    "mistral": MistralConfig,
    "gemma": GemmaConfig,
    "gemma2": Gemma2Config,
    "gemma3": Gemma3TextConfig,
    "phi3": Phi3Config,
}

# Each family's own convention (small Qwen and all Gemma checkpoints tie, Llama/Mistral/Phi-3 do not). The
# mix is deliberate: sharding and checkpoint code must handle both tied and untied lm heads.
_TIE_EMBEDDINGS: dict[str, bool] = {
    "llama": False,
    "qwen2": True,
    "qwen3": True,
    "qwen3_moe": False,
    "mistral": False,
    "gemma": True,
    "gemma2": True,
    "gemma3": True,
    "phi3": False,
}

# Size written by `make_tiny_model` (the quickstart model): about 1.1-1.25M parameters depending on the
# family. `build_tiny_config`'s own defaults are smaller still (~0.2M) to keep unit tests fast.
QUICKSTART_SIZE: dict[str, int] = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}


def _check_arch(arch: str) -> None:
    if arch not in _CONFIG_CLASSES and arch not in causal_lm_model_types():
        raise ValueError(
            f"unknown tiny arch {arch!r}; valid choices: {', '.join(TINY_ARCHES)}, or any causal-LM "
            "model type transformers registers (see `ulysses-pro make-tiny-model --help`)"
        )


# The hand-tuned keywords of `build_tiny_config` and the config keys they stand for.
_SPEC_KEYS = {
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
}


def _family_config(arch: str, vocab_size: int, sizes: dict[str, Any]) -> PretrainedConfig:
    """Any other registered family, shrunk by `tiny_families` (sizes given override its choices)."""
    overrides = {_SPEC_KEYS.get(key, key): value for key, value in sizes.items()}
    ids = {
        key: overrides.pop(key) for key in ("pad_token_id", "eos_token_id") if overrides.get(key) is not None
    }
    overrides.pop("bos_token_id", None)
    implementation = overrides.pop("attn_implementation", None)
    config = build_family_config(arch, vocab_size, **ids, **overrides)
    config._attn_implementation = implementation
    return config


def build_tiny_config(
    arch: str,
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = 2,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    **extra: Any,
) -> PretrainedConfig:
    """Return a tiny config of the real transformers class for ``arch`` (see ``TINY_ARCHES``).

    ``num_kv_heads=None`` means plain multi-head attention. ``head_dim`` defaults to
    ``hidden_size // num_heads`` (set explicitly because qwen3 and gemma default to 128/256 regardless of
    the hidden size). ``intermediate_size`` defaults to ``4 * hidden_size``. Special token ids default to
    ``None`` because the family defaults (e.g. phi3 pad 32000) point outside a small vocabulary; pass
    ``pad_token_id``/``bos_token_id``/``eos_token_id`` in ``extra``. Any other ``extra`` keyword is passed
    to the config class and overrides the defaults chosen here.
    """
    _check_arch(arch)
    if arch not in _CONFIG_CLASSES:
        given = {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "head_dim": head_dim,
            "intermediate_size": intermediate_size,
            "max_position_embeddings": max_position_embeddings,
        }
        defaults = {
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "max_position_embeddings": 4096,
        }
        # Only what the caller chose: the family module picks sizes that fit each family.
        chosen = {k: v for k, v in given.items() if v is not None and defaults.get(k) != v}
        return _family_config(arch, vocab_size, {**chosen, **extra})
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads < 1 or kv_heads < 1 or num_heads % kv_heads != 0:
        valid = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise ValueError(
            f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads} (grouped-query attention); "
            f"valid choices: {valid}"
        )
    if head_dim is None:
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; pass head_dim"
            )
        head_dim = hidden_size // num_heads

    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": _TIE_EMBEDDINGS[arch],
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "initializer_range": 0.02,
        "dtype": "float32",
        "attn_implementation": "sdpa",
    }
    windowed = "sliding_window" in extra
    if arch in ("qwen2", "qwen3", "qwen3_moe"):
        kwargs["use_sliding_window"] = windowed
        if windowed:
            kwargs["max_window_layers"] = 0  # Qwen's layers from this index on use the window
        if arch == "qwen3_moe":
            # Four small experts, two per token, and the router's load-balancing loss switched on.
            kwargs.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size)
            kwargs["output_router_logits"] = True
    elif arch == "mistral":
        kwargs["sliding_window"] = None
    elif arch == "phi3":
        kwargs["sliding_window"] = None
        # Only matters for longrope scaling; keep it equal so no scaling regime is ever implied.
        kwargs["original_max_position_embeddings"] = max_position_embeddings
    elif arch in ("gemma2", "gemma3"):
        if not windowed:
            kwargs["layer_types"] = ["full_attention"] * num_layers
            kwargs["sliding_window"] = max_position_embeddings
        kwargs["attn_logit_softcapping"] = None
        # Gemma scales queries by query_pre_attn_scalar**-0.5 (default 256); match standard 1/sqrt(head_dim).
        kwargs["query_pre_attn_scalar"] = head_dim
        if arch == "gemma2":
            kwargs["attn_implementation"] = "eager"  # transformers 5.23 rejects sdpa for Gemma2 models
    kwargs.update(extra)
    return _CONFIG_CLASSES[arch](**kwargs)


def build_tiny_model(
    arch: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    seed: int = 0,
    **config_overrides: Any,
) -> PreTrainedModel:
    """Build a randomly initialised fp32 causal LM; the same ``seed`` always gives identical weights.

    ``tokenizer`` (default: the built-in one) fixes ``vocab_size`` and the pad/bos/eos ids; every keyword of
    ``build_tiny_config`` (and any config field) can be overridden through ``config_overrides``.
    """
    _check_arch(arch)
    tokenizer = tokenizer if tokenizer is not None else load_builtin_tokenizer()
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    settings.update(config_overrides)
    config = build_tiny_config(arch, **settings)
    # fork_rng restores the caller's global RNG afterwards, so building a model has no side effects on
    # the surrounding program's randomness (data shuffling, dropout) while still being seed-exact.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        except ValueError as err:
            if "does not support an attention implementation" not in str(err):
                raise
            # A family without an SDPA path (BLOOM, MPT, ...): its eager attention.
            config._attn_implementation = "eager"
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def make_tiny_model(arch: str, out_dir: str | Path, *, seed: int = 0, **config_overrides: Any) -> Path:
    """Write a tiny model (safetensors) plus the built-in tokenizer to ``out_dir`` and return the path.

    The result loads offline with ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)``. The size defaults to ``QUICKSTART_SIZE`` (~1.2M parameters);
    ``config_overrides`` are applied on top of it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_builtin_tokenizer()
    model = build_tiny_model(arch, tokenizer, seed=seed, **{**QUICKSTART_SIZE, **config_overrides})
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tied lm head is counted once)."""
    return sum(p.numel() for p in model.parameters())

"""Which decoder families train exactly under SP (and with packed documents), and why the others
are refused: decided from the model's config alone, before any data or weight is loaded.

Three sources, in this order:
1. families that are not decoders at all (encoders, encoder-decoders) and families with a
   mechanism the SP path does not compute (`REFUSED`), each with its reason;
2. the model's own modules, built on the meta device (no memory, no weights): every token mixer
   must be attention that goes through transformers' attention interface (which SP replaces) or a
   recurrent layer `models/recurrent` drives; a convolution or a recurrence it does not know is
   refused by name; a recurrent layer whose heads do not split over the SP
   group is refused with the config key to change;
3. the config: attention dropout and ALiBi biases, which the SP kernels do not apply.
The family sweep (`tests/train/test_family_sweep.py`) trains a tiny model of every registered
family at SP=2 against SP=1 and checks that each is exact or refused here, never wrong.
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from pathlib import Path

import torch
from torch import nn

from .multimodal import WIRED_VISION_FAMILIES
from .recurrent import MECHANISMS, split_problems

logger = logging.getLogger(__name__)

_ENCODER = "an encoder model (bidirectional attention, trained as a masked LM); Ulysses Pro trains decoders"
_SEQ2SEQ = "the decoder of an encoder-decoder model (it cross-attends to an encoder)"

NOT_DECODERS: dict[str, str] = {
    **dict.fromkeys(
        (
            "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie",
            "megatron-bert", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer",
            "xlm", "xlm-roberta", "xlm-roberta-xl", "xmod", "modernbert-decoder",
        ),
        _ENCODER,
    ),
    **dict.fromkeys(
        (
            "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp",
            "pegasus", "plbart", "prophetnet", "trocr", "whisper", "musicgen", "musicgen_melody",
        ),
        _SEQ2SEQ,
    ),
    "xlnet": "a permutation language model (two-stream attention), not a causal decoder",
    "reformer": "LSH attention with chunked feed-forward, which the SP attention does not compute",
}  # fmt: skip

# Families whose attention does something the SP path does not compute, with what it is.
REFUSED: dict[str, str] = {
    "deepseek_v4": "compressed attention",
    "deepseek_v32": "indexed sparse attention (the lightning indexer picks keys per query)",
    "glm_moe_dsa": "indexed sparse attention (the lightning indexer picks keys per query)",
    "kolibri1_1": "indexed sparse attention",
    "dots3_note": "indexed sparse attention",
    "dots3_note_text": "indexed sparse attention",
    "qwen4_exp": "QSA (query-selected sparse) attention",
    "qwen4_exp_text": "QSA (query-selected sparse) attention",
}

# Recurrences without a sequence convolution (the module scan finds the others by theirs).
RECURRENCES_WITHOUT_CONV: dict[str, str] = {
    "minimax": "lightning attention (a linear-attention recurrence)",
    "rwkv": "the RWKV time-mixing recurrence",
    "xlstm": "the xLSTM (mLSTM) recurrence",
}

# The families the sweep measured exact (scripts/family_matrix.py writes it).
STATUS_FILE = Path(__file__).with_name("family_status.json")
# Set by the sweep itself, to measure a family preflight does not know yet.
VERIFYING_ENV = "ULYSSES_PRO_VERIFY_FAMILY"

# Attention-dropout keys of the families that have one, by the names their configs use.
ATTENTION_DROPOUT_KEYS = ("attention_dropout", "attn_pdrop", "attn_dropout", "attention_probs_dropout_prob")


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@cache
def _status() -> dict:
    return json.loads(STATUS_FILE.read_text()) if STATUS_FILE.exists() else {"exact": {}, "packing_leaks": {}}


def verified_exact() -> frozenset[str]:
    """Model types the family sweep measured exact at SP=2 with this project's code."""
    return frozenset(_status()["exact"])


def packing_leaks() -> dict[str, float]:
    """Model types whose packed documents the sweep saw reading each other at SP=1 (their position
    embeddings or attention do not follow position-id restarts), with the measured difference."""
    return dict(_status().get("packing_leaks", {}))


def text_model_type(model_type: str) -> str:
    """The model type of a registered family's text config (itself for text-only families)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(model_type)
    except Exception:  # noqa: BLE001  (a family whose defaults do not validate on their own)
        return model_type
    return getattr(_text_config(config), "model_type", model_type) or model_type


def model_types(config) -> list[str]:
    """The config's model type, then its text model type if that differs (multimodal wrappers)."""
    types = [getattr(config, "model_type", "")]
    text = getattr(_text_config(config), "model_type", "")
    return types + ([text] if text and text not in types else [])


def meta_model(config, trust_remote_code: bool = False) -> nn.Module | None:
    """The causal LM of `config` on the meta device (its module tree, no storage); None if the
    family cannot be built that way (then only the config checks apply)."""
    import transformers

    # A vision-language model is built whole: its language model alone is not what trains.
    vision = getattr(config, "vision_config", None) is not None
    auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    try:
        with torch.device("meta"):
            return auto.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001  (any family-specific build failure: fall back to the config)
        logger.debug("no meta model for %s: %s", getattr(config, "model_type", "?"), err)
        return None


# Config keys that count a family's routed experts.
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def routes_experts(config) -> bool:
    """Whether the decoder routes tokens to experts (so an expert may get no token in a step)."""
    text = _text_config(config)
    return any(
        isinstance(getattr(text, key, None), int) and getattr(text, key) > 1 for key in EXPERT_COUNT_KEYS
    )


def _unrouted_mixers(model: nn.Module) -> list[str]:
    """Class names of the layers holding a sequence convolution that nothing here drives (every
    Mamba, short-convolution and linear-attention layer transformers ships has one)."""
    modules = dict(model.named_modules())
    driven = [name for name, m in modules.items() if type(m).__name__ in MECHANISMS]
    found = []
    for name, module in modules.items():
        if not isinstance(module, nn.Conv1d) or any(name.startswith(f"{d}.") for d in driven):
            continue
        owner = type(modules[name.rsplit(".", 1)[0]] if "." in name else model).__name__
        if owner not in found:
            found.append(owner)
    return found


def _alibi(text) -> bool:
    attn_config = getattr(text, "attn_config", None)
    return (
        getattr(text, "model_type", "") == "bloom"
        or bool(getattr(text, "alibi", False))
        or bool(getattr(attn_config, "alibi", False))
    )


def sequence_parallel_problems(config, sp_size: int, model: nn.Module | None = None) -> list[str]:
    """Why `config`'s family cannot train exactly at `sp_size` > 1 (empty: it can). `model`: its
    meta model if already built."""
    kinds = model_types(config)
    for kind in kinds:
        if kind in NOT_DECODERS:
            return [f"model type {kind} is {NOT_DECODERS[kind]}"]
        reason = REFUSED.get(kind) or RECURRENCES_WITHOUT_CONV.get(kind)
        if reason:
            return [f"model type {kind} uses {reason}, which sequence-parallel training does not compute"]
    from transformers import CONFIG_MAPPING

    if kinds[0] not in CONFIG_MAPPING:
        return [
            f"model type {kinds[0]} is remote code (trust_remote_code): its attention does not go through "
            "transformers' attention interface, the one Ulysses Pro shards"
        ]
    text = _text_config(config)
    problems = []
    measured = kinds[-1] in verified_exact() or kinds[0] in WIRED_VISION_FAMILIES
    if not os.environ.get(VERIFYING_ENV) and not measured:
        problems.append(
            f"model type {kinds[-1]} is not among the families measured exact under sequence parallelism "
            "(docs/families.md)"
        )
    if _alibi(text):
        problems.append(
            f"model type {kinds[-1]} uses ALiBi position biases, which the SP attention kernels do not add"
        )
    for key in ATTENTION_DROPOUT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, float) and value > 0:
            problems.append(
                f"{key}: {value} in the model's config: sequence-parallel attention has no dropout; "
                f"set {key} to 0 in its config.json"
            )
    model = model if model is not None else meta_model(config)
    if model is not None:
        unrouted = _unrouted_mixers(model)
        if unrouted:
            problems.append(
                f"model type {kinds[-1]} mixes tokens in {', '.join(unrouted)} layers, which do not run "
                "through sequence-parallel attention"
            )
        problems.extend(split_problems(model, sp_size))
    return problems


def packing_problems(config, model: nn.Module | None = None) -> list[str]:
    """Why packed documents would see each other in this family (empty: they cannot)."""
    leaks = {} if os.environ.get(VERIFYING_ENV) else packing_leaks()
    for kind in model_types(config):
        if kind in RECURRENCES_WITHOUT_CONV:
            return [
                f"model type {kind} uses {RECURRENCES_WITHOUT_CONV[kind]}, which runs across document boundaries"
            ]
        if kind in leaks:
            return [
                f"model type {kind} does not restart its positions or attention at position-id restarts "
                f"(a packed document's logits differ from the document alone by {leaks[kind]:.1e})"
            ]
    model = model if model is not None else meta_model(config)
    if model is None:
        return []
    unrouted = _unrouted_mixers(model)
    if unrouted:
        return [
            f"model type {model_types(config)[-1]} has {', '.join(unrouted)} layers that carry a state or a "
            "convolution window across document boundaries"
        ]
    return []

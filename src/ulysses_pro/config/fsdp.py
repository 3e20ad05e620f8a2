"""LLaMA-Factory's / transformers' FSDP keys (`fsdp`, `fsdp_config`) read into what this project drives.

FSDP2 (`torch.distributed.fsdp.fully_shard`) is applied by `engines/fsdp2.py`, on CPU (gloo) and
GPU alike; the keys are taken out of the `TrainingArguments` so that accelerate neither shards the
model a second time on GPUs nor, on CPUs (where it does not enable FSDP), wraps it in DDP. The keys
keep transformers' meaning (`transformers.TrainingArguments._process_fsdp_args`): `fsdp` is `true`
or a list/string of options (`full_shard` = reshard after forward, `shard_grad_op` = keep the
gathered weights until backward, `offload`, `auto_wrap`); `fsdp_config` (a dict or a JSON file,
keys with or without the `fsdp_` prefix) holds `version`, `reshard_after_forward`, `cpu_offload`,
`transformer_layer_cls_to_wrap`, `auto_wrap_policy` and `activation_checkpointing`. What FSDP2
cannot honour is refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .parsing import ConfigError

# FSDP1 tuning keys that have no FSDP2 counterpart and change nothing numerically: accepted, unused.
FSDP1_ONLY_KEYS = frozenset(
    {
        "backward_prefetch",
        "forward_prefetch",
        "limit_all_gathers",
        "use_orig_params",
        "sync_module_states",
        "cpu_ram_efficient_loading",
        "state_dict_type",
        "min_num_params",
        "xla_fsdp_v2",
        "xla_fsdp_grad_ckpt",
    }
)
WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "NO_WRAP")


@dataclass(frozen=True)
class FsdpSettings:
    """How `engines/fsdp2.py` shards the model (the whole world is one FSDP mesh)."""

    reshard_after_forward: bool = True
    cpu_offload: bool = False
    # Module classes sharded as units of their own; empty: the model's `_no_split_modules`.
    layer_classes: tuple[str, ...] = ()
    wrap_layers: bool = True
    activation_checkpointing: bool = False
    origin: str = "fsdp"


def _truth(value: Any, key: str, origin: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{origin}: fsdp_config.{key}={value!r} is not a boolean")


def _config_dict(raw: Any, origin: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            with open(raw, encoding="utf-8") as handle:
                raw = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{origin}: fsdp_config={raw!r} is not a readable JSON file ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: fsdp_config must be a mapping or a JSON file, not {type(raw).__name__}")
    return {key[5:] if key.startswith("fsdp_") else key: value for key, value in raw.items()}


def _options(raw: Any, origin: str) -> list[str]:
    if raw is True:
        return ["full_shard"]
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, (list, tuple)):
        return [str(item) for item in raw]
    raise ConfigError(f"{origin}: fsdp={raw!r} is not valid; expected true or a list of FSDP options")


def fsdp_settings(fsdp: Any, fsdp_config: Any, origins: dict[str, str] | None = None) -> FsdpSettings | None:
    """The FSDP2 settings `fsdp` / `fsdp_config` ask for (None: FSDP is off), or ConfigError."""
    origins = origins or {}
    origin = origins.get("fsdp", "fsdp")
    config_origin = origins.get("fsdp_config", origin)
    if fsdp in (None, False, "", []):
        if fsdp_config:
            raise ConfigError(f"{config_origin}: fsdp_config is set but fsdp is not; add fsdp: full_shard")
        return None
    config = _config_dict(fsdp_config, config_origin)
    version = int(config.pop("version", 2))
    if version != 2:
        raise ConfigError(
            f"{config_origin}: fsdp_config.version={version}: FSDP1 is not supported (transformers deprecates "
            "it); use version: 2 (FSDP2 shards the same parameters, per layer)"
        )
    reshard, offload = True, False
    for option in _options(fsdp, origin):
        if option == "full_shard":
            reshard = True
        elif option == "shard_grad_op":
            reshard = False
        elif option == "offload":
            offload = True
        elif option == "auto_wrap":
            pass
        elif option in ("hybrid_shard", "hybrid_shard_zero2", "no_shard"):
            raise ConfigError(
                f"{origin}: fsdp option {option} is not supported: Ulysses Pro shards over the whole world "
                "(sequence-parallel ranks included); use full_shard or shard_grad_op"
            )
        else:
            raise ConfigError(
                f"{origin}: unknown fsdp option {option!r}; expected full_shard, shard_grad_op, offload, auto_wrap"
            )
    if config.pop("xla", False):
        raise ConfigError(f"{config_origin}: fsdp_config.xla: XLA FSDP is not supported")
    if "reshard_after_forward" in config:
        reshard = _truth(config.pop("reshard_after_forward"), "reshard_after_forward", config_origin)
    if "cpu_offload" in config:
        offload = _truth(config.pop("cpu_offload"), "cpu_offload", config_origin)
    policy = str(config.pop("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")).upper()
    if policy not in WRAP_POLICIES:
        raise ConfigError(
            f"{config_origin}: fsdp_config.auto_wrap_policy={policy}: FSDP2 here shards per decoder layer "
            f"({' or '.join(WRAP_POLICIES)}); size-based wrapping is not supported"
        )
    layers = config.pop("transformer_layer_cls_to_wrap", None) or ()
    layers = (layers,) if isinstance(layers, str) else tuple(str(name) for name in layers)
    # FSDP's own activation checkpointing is our gradient checkpointing (on unless disabled); off, it
    # leaves that switch alone.
    checkpointing = _truth(
        config.pop("activation_checkpointing", False), "activation_checkpointing", config_origin
    )
    unknown = sorted(set(config) - FSDP1_ONLY_KEYS)
    if unknown:
        raise ConfigError(f"{config_origin}: unknown fsdp_config key(s) {', '.join(unknown)}")
    return FsdpSettings(reshard, offload, layers, policy == "TRANSFORMER_BASED_WRAP", checkpointing, origin)


def take_fsdp_settings(
    training_kwargs: dict[str, Any], origins: dict[str, str], model_args
) -> FsdpSettings | None:
    """Pop `fsdp` / `fsdp_config` out of the TrainingArguments keys and read them (see the module doc)."""
    settings = fsdp_settings(
        training_kwargs.pop("fsdp", None), training_kwargs.pop("fsdp_config", None), origins
    )
    if settings is None:
        return None
    if settings.activation_checkpointing and model_args.disable_gradient_checkpointing:
        raise ConfigError(
            f"{origins.get('fsdp_config', 'fsdp_config')}: fsdp_config.activation_checkpointing: true contradicts "
            "disable_gradient_checkpointing: true; keep one"
        )
    if training_kwargs.get("fp16"):
        raise ConfigError(
            f"{origins.get('fp16', 'fp16')}: fp16 with FSDP2 needs a sharded gradient scaler this project does "
            "not drive; use bf16: true"
        )
    if training_kwargs.get("load_best_model_at_end"):
        raise ConfigError(
            f"{origins.get('load_best_model_at_end', 'load_best_model_at_end')}: load_best_model_at_end with fsdp: "
            "checkpoints hold sharded states that transformers cannot load back; convert the best checkpoint "
            "with `ulysses-pro convert` instead"
        )
    if training_kwargs.get("deepspeed"):
        raise ConfigError(f"{settings.origin}: fsdp and deepspeed both shard the model; choose one")
    return settings

"""File + overrides -> validated argument groups, before any model is loaded."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .args import (
    ARGUMENT_GROUPS,
    DataArguments,
    ExportArguments,
    FinetuningArguments,
    GeneratingArguments,
    MemoryArguments,
    ModelArguments,
    ParallelArguments,
    ProArguments,
)
from .fsdp import FsdpSettings, take_fsdp_settings
from .llamafactory_keys import LLAMAFACTORY_DEFAULTS, NO_DEFAULT
from .parsing import ConfigError, Setting, coerce, parse_cli_tokens, parse_scalar, read_config_file
from .process_group import cuda_available, init_cpu_deepspeed_comm, init_cpu_process_group
from .validation import validate

logger = logging.getLogger(__name__)

# Keys that LLaMA-Factory configs still carry although transformers 5 renamed or dropped them.
LEGACY_RENAMES = {"evaluation_strategy": "eval_strategy", "no_cuda": "use_cpu"}
# Handled by the loader itself rather than any dataclass.
LOADER_KEYS = ("overwrite_output_dir", "warmup_ratio", "group_by_length", "disable_shuffling")
# Keys LLaMA-Factory knows that change nothing for text-only training here: accepted, ignored.
IGNORED_KEYS = {
    "logging_dir": "tensorboard writes under output_dir/runs in transformers 5",
    "save_safetensors": "checkpoints are always safetensors",
    "print_param_status": "trainable parameters are always summarised",
}
# LLaMA-Factory features that would silently change results if ignored: refuse unless left at default.
UNSUPPORTED_KEYS = {
    "quantization_bit": None,
    "quantization_method": "bnb",
    "use_unsloth": False,
    "use_galore": False,
    "use_badam": False,
    "use_apollo": False,
    "rope_scaling": None,
    "shift_attn": False,
    "resize_vocab": False,
    "use_llama_pro": False,
    "pissa_init": False,
    "infer_backend": "huggingface",
}


@dataclass
class RunConfig:
    """Everything a run needs, validated."""

    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    parallel: ParallelArguments
    training: Any  # transformers.Seq2SeqTrainingArguments
    overwrite_output_dir: bool = False
    config_file: str | None = None
    pro: ProArguments = dataclasses.field(default_factory=ProArguments)
    memory: MemoryArguments = dataclasses.field(default_factory=MemoryArguments)
    # Where each key was set (`cfg.yaml:12`, `command line (--lr 3)`), for later checks' messages.
    origins: dict[str, str] = dataclasses.field(default_factory=dict)
    export: ExportArguments = dataclasses.field(default_factory=ExportArguments)
    generating: GeneratingArguments = dataclasses.field(default_factory=GeneratingArguments)
    # FSDP2, driven by engines/fsdp2.py (None: off); `fsdp`/`fsdp_config` never reach TrainingArguments.
    fsdp: FsdpSettings | None = None

    def to_dict(self) -> dict[str, Any]:
        """Flat dict of every key of our argument groups (for logs and `get_status`)."""
        flat: dict[str, Any] = {}
        groups = (
            self.model,
            self.data,
            self.finetuning,
            self.parallel,
            self.pro,
            self.memory,
            self.export,
            self.generating,
        )
        for group in groups:
            flat.update(dataclasses.asdict(group))
        return flat


def _training_arguments_class():
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


@functools.cache
def _defined_keys() -> frozenset[str]:
    keys = set(LOADER_KEYS) | set(IGNORED_KEYS) | set(UNSUPPORTED_KEYS) | set(LEGACY_RENAMES)
    for cls in (*ARGUMENT_GROUPS, _training_arguments_class()):
        keys |= set(_field_types(cls))
    return frozenset(keys)


def known_keys() -> list[str]:
    """Every key a config may use: ours, transformers' TrainingArguments', and LLaMA-Factory's."""
    return sorted(_defined_keys() | set(LLAMAFACTORY_DEFAULTS))


def _unknown_key_error(key: str, setting: Setting) -> ConfigError:
    close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see `ulysses-pro train --help` for the valid keys"
    return ConfigError(f"{setting.origin}: unknown key {key!r}{hint}")


def _apply_legacy(settings: dict[str, Setting]) -> tuple[dict[str, Setting], bool]:
    out = dict(settings)
    for old, new in LEGACY_RENAMES.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{out[old].origin}: {old} and {new} both given; keep only {new}")
            out[new] = out.pop(old)
    if "warmup_ratio" in out:
        setting = out.pop("warmup_ratio")
        ratio = coerce("warmup_ratio", setting, float)
        if "warmup_steps" in out and coerce("warmup_steps", out["warmup_steps"], float) != 0:
            raise ConfigError(f"{setting.origin}: warmup_ratio and warmup_steps both given; keep one")
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"{setting.origin}: warmup_ratio={ratio} must be in [0, 1)")
        # transformers 5 reads warmup_steps < 1 as a fraction of the total steps.
        out["warmup_steps"] = Setting(ratio, setting.origin)
    if "disable_shuffling" in out:  # LLaMA-Factory's key for an unshuffled training set
        setting = out.pop("disable_shuffling")
        if coerce("disable_shuffling", setting, bool):
            if "group_by_length" in out and coerce("group_by_length", out["group_by_length"], bool):
                raise ConfigError(
                    f"{setting.origin}: disable_shuffling and group_by_length both set; keep one"
                )
            out["train_sampling_strategy"] = Setting("sequential", setting.origin)
    if isinstance(out.get("fsdp") and out["fsdp"].value, list):  # `fsdp: [full_shard, auto_wrap]`
        out["fsdp"] = Setting(" ".join(str(option) for option in out["fsdp"].value), out["fsdp"].origin)
    elif "fsdp" in out and isinstance(out["fsdp"].value, bool):  # transformers' `fsdp: true`
        out["fsdp"] = Setting("full_shard" if out["fsdp"].value else "", out["fsdp"].origin)
    if "group_by_length" in out:
        setting = out.pop("group_by_length")
        if coerce("group_by_length", setting, bool):
            out["train_sampling_strategy"] = Setting("group_by_length", setting.origin)
    overwrite = False
    if "overwrite_output_dir" in out:
        overwrite = coerce("overwrite_output_dir", out.pop("overwrite_output_dir"), bool)
    llamafactory_only = _llamafactory_only_keys()
    for key in list(out):
        if key in IGNORED_KEYS:
            out.pop(key)
        elif key in UNSUPPORTED_KEYS or key in llamafactory_only:
            setting = out.pop(key)
            default = UNSUPPORTED_KEYS.get(key, llamafactory_only.get(key))
            if not _is_default(key, setting, default):
                shown = "unset" if default == NO_DEFAULT else repr(default)
                raise ConfigError(
                    f"{setting.origin}: {key}={setting.value!r} is a LLaMA-Factory option Ulysses Pro does not "
                    f"support; remove it (LLaMA-Factory's default: {shown})"
                )
    return out, overwrite


def _llamafactory_only_keys() -> dict[str, object]:
    """LLaMA-Factory's keys that no argument group here defines (`llamafactory_keys.py`)."""
    ours = _defined_keys()
    return {key: default for key, default in LLAMAFACTORY_DEFAULTS.items() if key not in ours}


def _is_default(key: str, setting: Setting, default: object) -> bool:
    """Whether a config value (typed YAML, or a command-line string) equals LLaMA-Factory's default."""
    value = setting.value
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return default in (None, NO_DEFAULT)
    if default in (None, NO_DEFAULT):
        return False
    if isinstance(default, (bool, int, float)):
        try:
            return coerce(key, setting, type(default)) == default
        except ConfigError:
            return False
    return value == default or str(value) == str(default)


_BOOLEAN_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0", ""}


def _apply_pro_switches(settings: dict[str, Setting]) -> None:
    """`--debug` / ULYSSES_DEBUG and `--adjust-lr [F]` / ULYSSES_ADJUST_LR (explicit keys win over env)."""
    if "debug" not in settings and os.environ.get("ULYSSES_DEBUG"):
        settings["debug"] = Setting(parse_scalar(os.environ["ULYSSES_DEBUG"]), "environment (ULYSSES_DEBUG)")
    debug = settings.get("debug")
    if (
        debug is not None
        and isinstance(debug.value, str)
        and debug.value.strip().lower() not in _BOOLEAN_WORDS
    ):
        # transformers' own `debug` option (e.g. underflow_overflow) keeps working under its name.
        settings["hf_debug"] = settings.pop("debug")
    if "adjust_lr" not in settings and "ULYSSES_ADJUST_LR" in os.environ:
        raw = os.environ["ULYSSES_ADJUST_LR"]
        settings["adjust_lr"] = Setting(
            parse_scalar(raw) if raw.strip() else True, "environment (ULYSSES_ADJUST_LR)"
        )
    adjust = settings.get("adjust_lr")
    if adjust is not None and isinstance(adjust.value, bool):
        # A bare `--adjust-lr` means a factor of 1.0 (the configured rate, logged as such).
        settings["adjust_lr"] = Setting(1.0 if adjust.value else None, adjust.origin)


def _adjust_learning_rate(pro: ProArguments, training_kwargs: dict[str, Any], default: float) -> None:
    if pro.adjust_lr is None:
        return
    configured = float(training_kwargs.get("learning_rate", default))
    adjusted = configured * pro.adjust_lr
    training_kwargs["learning_rate"] = adjusted
    logger.info("learning rate adjusted from %g to %g (--adjust-lr %g)", configured, adjusted, pro.adjust_lr)


def _sequence_parallel_from_deepspeed(settings: dict[str, Setting]) -> None:
    """`sequence_parallel_size` may live in the DeepSpeed JSON; the YAML/CLI value must agree with it."""
    ds = settings.get("deepspeed")
    if ds is None or ds.value is None:
        return
    if isinstance(ds.value, dict):
        ds_config = ds.value
    else:
        path = Path(str(ds.value))
        if not path.is_file():
            raise ConfigError(f"{ds.origin}: deepspeed config {path} not found")
        try:
            ds_config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
    if "sequence_parallel_size" not in ds_config:
        return
    from_ds = Setting(ds_config["sequence_parallel_size"], f"{ds.value} (sequence_parallel_size)")
    # DeepSpeed reads this key as its own (it divides its data-parallel world by it); sequence
    # parallelism here is ours, and DeepSpeed sees the plain ZeRO config.
    settings["deepspeed"] = Setting(
        {k: v for k, v in ds_config.items() if k != "sequence_parallel_size"}, ds.origin
    )
    if "sequence_parallel_size" in settings:
        ours = coerce("sequence_parallel_size", settings["sequence_parallel_size"], int)
        if ours != coerce("sequence_parallel_size", from_ds, int):
            raise ConfigError(
                f"{settings['sequence_parallel_size'].origin}: sequence_parallel_size={ours} disagrees with "
                f"{from_ds.origin}={from_ds.value}; set it in one place"
            )
    else:
        settings["sequence_parallel_size"] = from_ds


def load_config(
    source: str | Path | dict | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML/JSON file (or dict) plus overrides (later wins) into a validated RunConfig."""
    settings: dict[str, Setting] = {}
    config_file = None
    cli_overrides: dict[str, Setting] = {}
    if isinstance(overrides, list):
        cli_file, cli_overrides = parse_cli_tokens(overrides)
        if cli_file is not None:
            if source is not None:
                raise ConfigError(f"two config files given: {source} and {cli_file}; pass one")
            source = cli_file
    elif isinstance(overrides, dict):
        cli_overrides = {k: Setting(v, "override") for k, v in overrides.items()}
    if isinstance(source, dict):
        settings.update({k: Setting(v, "config dict") for k, v in source.items()})
    elif source is not None:
        config_file = str(source)
        settings.update(read_config_file(source))
    settings.update(cli_overrides)
    settings, overwrite = _apply_legacy(settings)
    _apply_pro_switches(settings)
    _sequence_parallel_from_deepspeed(settings)

    groups: dict[type, dict[str, Any]] = {cls: {} for cls in ARGUMENT_GROUPS}
    training_cls = _training_arguments_class()
    training_kwargs: dict[str, Any] = {}
    types_by_group = {cls: _field_types(cls) for cls in ARGUMENT_GROUPS}
    training_types = _field_types(training_cls)
    for key, setting in settings.items():
        owner = next((cls for cls in ARGUMENT_GROUPS if key in types_by_group[cls]), None)
        if owner is not None:
            groups[owner][key] = coerce(key, setting, types_by_group[owner][key])
        elif key == "hf_debug":
            training_kwargs["debug"] = coerce("debug", setting, training_types["debug"])
        elif key in training_types:
            training_kwargs[key] = coerce(key, setting, training_types[key])
        else:
            raise _unknown_key_error(key, setting)

    model, data, finetuning, parallel, pro, memory, export, generating = (
        cls(**groups[cls]) for cls in ARGUMENT_GROUPS
    )
    origins = {key: setting.origin for key, setting in settings.items()}
    _resolve_checkpointing(model, training_kwargs, settings)
    validate(model, data, finetuning, parallel, training_kwargs, origins, pro, memory, generating)
    if not model.disable_gradient_checkpointing:
        # Checkpointed layers (reentrant ones especially) and DDP's unused-parameter search do not mix;
        # every trainable parameter gets a gradient here (LLaMA-Factory sets the same for LoRA).
        training_kwargs.setdefault("ddp_find_unused_parameters", False)
    _adjust_learning_rate(pro, training_kwargs, _default_learning_rate(training_cls))
    training_kwargs.setdefault("output_dir", "saves/ulysses-pro")
    training_kwargs.setdefault("report_to", "none")
    # The trainer computes its own loss from pre-shifted labels; keep every collated column.
    training_kwargs["remove_unused_columns"] = False
    fsdp = take_fsdp_settings(training_kwargs, origins, model)
    if not cuda_available():
        # LLaMA-Factory configs say bf16: true for GPUs; on a CPU-only machine that still works with use_cpu.
        training_kwargs.setdefault("use_cpu", True)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            training_kwargs.setdefault("ddp_backend", "gloo")
            init_cpu_process_group(training_kwargs["ddp_backend"], training_kwargs.get("ddp_timeout", 1800))
            if training_kwargs.get("deepspeed"):
                init_cpu_deepspeed_comm(training_kwargs["ddp_backend"])
    try:
        training = training_cls(**training_kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid training arguments: {err}") from None
    return RunConfig(
        model,
        data,
        finetuning,
        parallel,
        training,
        overwrite,
        config_file,
        pro,
        memory,
        origins,
        export,
        generating,
        fsdp,
    )


# transformers' own switches (the second pair is 5.24's new name); ours decide, so the Trainer never
# re-enables checkpointing with a plain torch function over ours.
_HF_CHECKPOINTING = ("gradient_checkpointing", "activation_checkpointing")
_HF_CHECKPOINTING_KWARGS = ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")


def _resolve_checkpointing(model: ModelArguments, training_kwargs: dict[str, Any], settings: dict) -> None:
    """LLaMA-Factory's rule (on unless disable_gradient_checkpointing), with HF's keys honoured."""
    explicit = [training_kwargs.pop(key) for key in _HF_CHECKPOINTING if key in training_kwargs]
    explicit = [value for value in explicit if value is not None]
    if explicit and not explicit[-1]:
        model.disable_gradient_checkpointing = True
    elif explicit and "disable_gradient_checkpointing" in settings and model.disable_gradient_checkpointing:
        raise ConfigError(
            f"{settings['disable_gradient_checkpointing'].origin}: disable_gradient_checkpointing: true contradicts "
            "gradient_checkpointing: true; keep one"
        )
    for key in _HF_CHECKPOINTING_KWARGS:
        extra = training_kwargs.pop(key, None)
        if isinstance(extra, str):
            extra = json.loads(extra)
        if extra and "use_reentrant" in extra and "use_reentrant_gc" not in settings:
            model.use_reentrant_gc = bool(extra["use_reentrant"])


def _default_learning_rate(training_cls) -> float:
    return next(f.default for f in dataclasses.fields(training_cls) if f.name == "learning_rate")

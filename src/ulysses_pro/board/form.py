"""The Train tab's fields <-> the config dict the CLI reads (LLaMA-Factory keys), and that dict as YAML.

A field is one config key, except four board-only ones: `nproc` (processes, `NPROC_PER_NODE`),
`precision` (bf16 / fp16 / pure_bf16 keys), `engine` (`deepspeed` or `fsdp`) and `extra` (YAML
for every key without a field). Loading a config puts each key in its field and the rest in
`extra`, so form -> config -> form and config -> form -> config keep every key. A key a config
leaves out shows the CLI's own default, so saving the form never changes what a run does.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ..config.args import (
    ARGUMENT_GROUPS,
    FINETUNING_TYPES,
    PREFERENCE_LOSSES,
    SEQUENCE_PARALLEL_MODES,
    STAGES,
)


class FormError(ValueError):
    """A form value that makes no config (one line, naming the field)."""


@dataclass(frozen=True)
class Field:
    key: str
    label: str
    kind: str  # text | int | float | bool | choice | multi (a list shown, a comma string in YAML)
    default: Any = None
    choices: tuple = ()
    stages: tuple[str, ...] | None = None  # written only for these stages
    finetuning: tuple[str, ...] | None = None  # written only for these finetuning types
    group: str = "train"
    info: str = ""


PRECISIONS = ("fp32", "bf16", "fp16", "pure_bf16")
ENGINES = ("none", "deepspeed", "fsdp")
SP_SIZES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_FSDP = "full_shard auto_wrap"

FIELDS: tuple[Field, ...] = (
    Field("model_name_or_path", "Model (folder, hub id, or tiny:llama)", "text", group="model"),
    Field("adapter_name_or_path", "Adapter to start from (optional)", "text", group="model"),
    Field("template", "Template (blank: the tokenizer's own)", "choice", group="model"),
    Field("stage", "Stage", "choice", "sft", STAGES, group="model"),
    Field("finetuning_type", "Finetuning type", "choice", "lora", FINETUNING_TYPES, group="model"),
    Field("lora_rank", "LoRA rank", "int", 8, finetuning=("lora",), group="model"),
    Field("lora_alpha", "LoRA alpha (blank: 2 x rank)", "int", finetuning=("lora",), group="model"),
    Field("lora_dropout", "LoRA dropout", "float", 0.0, finetuning=("lora",), group="model"),
    Field("lora_target", "LoRA target modules", "text", "all", finetuning=("lora",), group="model"),
    Field("freeze_trainable_layers", "Trainable layers", "int", 2, finetuning=("freeze",), group="model"),
    Field("freeze_trainable_modules", "Trainable modules", "text", "all", finetuning=("freeze",), group="model"),
    Field("pref_loss", "Preference loss", "choice", "sigmoid", PREFERENCE_LOSSES, stages=("dpo",), group="model"),
    Field("pref_beta", "Preference beta", "float", 0.1, stages=("dpo", "kto"), group="model"),
    Field("reward_model", "Reward model folder", "text", stages=("ppo", "grpo"), group="model"),
    Field("num_generations", "Completions per prompt", "int", 8, stages=("grpo",), group="model"),
    Field("dataset_dir", "Dataset folder (with dataset_info.json)", "text", "data", group="data"),
    Field("dataset", "Datasets", "multi", group="data"),
    Field("cutoff_len", "Cutoff length (tokens)", "int", 2048, group="data"),
    Field("max_samples", "Max samples (blank: all)", "int", group="data"),
    Field("packing", "Packing", "bool", False, group="data"),
    Field("per_device_train_batch_size", "Batch size per device", "int", 1),
    Field("gradient_accumulation_steps", "Gradient accumulation", "int", 8),
    Field("learning_rate", "Learning rate", "float", 1e-4),
    Field("num_train_epochs", "Epochs", "float", 3.0),
    Field("max_steps", "Max steps (-1: by epochs)", "int", -1),
    Field("logging_steps", "Log every N steps", "int", 5),
    Field("save_steps", "Checkpoint every N steps", "int", 100),
    Field("output_dir", "Output folder", "text"),
    Field("sequence_parallel_size", "Sequence-parallel size", "choice", 1, SP_SIZES, group="sp"),
    Field("sequence_parallel_mode", "SP mode", "choice", "auto", SEQUENCE_PARALLEL_MODES, group="sp"),
    Field("ulysses_degree", "Ulysses degree (hybrid; blank: auto)", "int", group="sp"),
    Field("deepspeed", "DeepSpeed JSON (engine: deepspeed)", "text", group="engine"),
    Field("fsdp", "FSDP options (engine: fsdp)", "text", DEFAULT_FSDP, group="engine"),
)
# The board's own fields, with their defaults (not config keys).
BOARD_FIELDS: dict[str, Any] = {"nproc": 1, "precision": "bf16", "engine": "none", "extra": ""}
# Written into every config the board starts: it trains, plots, and counts tokens for tokens/s.
BOARD_KEYS: dict[str, Any] = {
    "do_train": True,
    "plot_loss": True,
    "include_num_input_tokens_seen": True,
    "report_to": "none",
}
_FIELD_BY_KEY = {f.key: f for f in FIELDS}
NAMES: tuple[str, ...] = tuple(f.key for f in FIELDS) + tuple(BOARD_FIELDS)


def form_defaults() -> dict[str, Any]:
    """A new run's form: the board's defaults."""
    return {**{f.key: f.default for f in FIELDS}, **BOARD_FIELDS}


def cli_default(key: str) -> Any:
    """The value the CLI uses when a config leaves `key` out (our argument groups, then transformers')."""
    for group in ARGUMENT_GROUPS:
        for field in dataclasses.fields(group):
            if field.name == key:
                if field.default is not dataclasses.MISSING:
                    return field.default
                return field.default_factory() if field.default_factory is not dataclasses.MISSING else None
    from transformers import Seq2SeqTrainingArguments

    found = {f.name: f for f in dataclasses.fields(Seq2SeqTrainingArguments)}.get(key)
    return None if found is None or found.default is dataclasses.MISSING else found.default


def _applies(field: Field, stage: str, finetuning: str) -> bool:
    return (field.stages is None or stage in field.stages) and (
        field.finetuning is None or finetuning in field.finetuning
    )


def _typed(field: Field, value: Any) -> Any:
    """A component's value as the config holds it; None when blank."""
    if value is None or value == "" or value == []:
        return None
    try:
        if field.kind == "int" or (field.kind == "choice" and isinstance(field.default, int)):
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if field.kind == "float":
            return float(value)
    except (TypeError, ValueError):
        wanted = "a whole number" if field.kind == "int" or field.kind == "choice" else "a number"
        raise FormError(f"{field.label} ({field.key}): {value!r} is not {wanted}") from None
    if field.kind == "multi":
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return ",".join(str(item).strip() for item in items if str(item).strip()) or None
    if field.kind == "bool":
        return bool(value)
    return str(value).strip() if isinstance(value, str) else value


def parse_extra(text: str | None) -> dict[str, Any]:
    """The extra-keys box: a YAML mapping (blank: none)."""
    if not text or not text.strip():
        return {}
    try:
        extra = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise FormError(f"extra keys: not YAML ({str(err).splitlines()[0]})") from None
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise FormError("extra keys: expected `key: value` lines")
    return extra


def config_from_form(values: dict[str, Any]) -> dict[str, Any]:
    """The config dict (the CLI's YAML keys) of a filled form."""
    stage = values.get("stage") or "sft"
    finetuning = values.get("finetuning_type") or "lora"
    engine = values.get("engine") or "none"
    config: dict[str, Any] = {}
    for field in FIELDS:
        if field.key in ("deepspeed", "fsdp") or not _applies(field, stage, finetuning):
            continue
        value = _typed(field, values.get(field.key))
        if value is not None:
            config[field.key] = value
    precision = values.get("precision") or "fp32"
    if precision not in PRECISIONS:
        raise FormError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "fp32":
        config["bf16" if precision == "pure_bf16" else precision] = True
    if precision == "pure_bf16":
        config["pure_bf16"] = True
    if engine == "deepspeed":
        path = _typed(_FIELD_BY_KEY["deepspeed"], values.get("deepspeed"))
        if path is None:
            raise FormError("engine deepspeed needs the DeepSpeed JSON file (the `deepspeed` key)")
        config["deepspeed"] = path
    elif engine == "fsdp":
        config["fsdp"] = _typed(_FIELD_BY_KEY["fsdp"], values.get("fsdp")) or DEFAULT_FSDP
    elif engine != "none":
        raise FormError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    for key, value in BOARD_KEYS.items():
        config.setdefault(key, value)
    extra = parse_extra(values.get("extra"))
    # A key the form itself wrote is set in its field; `extra` holds only the others (and may
    # override the board's own keys: do_train: false, report_to: ...).
    clash = sorted(key for key in extra if key in config and key not in BOARD_KEYS)
    if clash:
        raise FormError(f"extra keys: {', '.join(clash)} has a field of its own in the form; set it there")
    config.update(extra)
    return config


def form_from_config(config: dict[str, Any], nproc: int | None = None) -> dict[str, Any]:
    """Form values for a config dict: each key in its field, the rest in `extra`."""
    rest = dict(config)
    values: dict[str, Any] = {}
    stage = rest.get("stage", cli_default("stage"))
    finetuning = rest.get("finetuning_type", cli_default("finetuning_type"))
    for field in FIELDS:
        if field.key in ("deepspeed", "fsdp"):
            continue
        if field.key in rest and not _applies(field, stage, finetuning):
            values[field.key] = field.default  # a key the stage ignores stays in `extra`, as written
            continue
        value = rest.pop(field.key) if field.key in rest else cli_default(field.key)
        if field.kind == "multi" and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        values[field.key] = value
    pure = bool(rest.get("pure_bf16"))
    if pure and rest.get("bf16") is True:
        values["precision"] = "pure_bf16"
        rest.pop("pure_bf16")
        rest.pop("bf16", None)
    elif rest.get("bf16") is True and not rest.get("fp16"):
        values["precision"] = "bf16"
        rest.pop("bf16")
    elif rest.get("fp16") is True and not rest.get("bf16"):
        values["precision"] = "fp16"
        rest.pop("fp16")
    else:
        values["precision"] = "fp32"
    values["deepspeed"], values["fsdp"] = None, DEFAULT_FSDP
    if rest.get("deepspeed") and not rest.get("fsdp"):
        values["engine"], values["deepspeed"] = "deepspeed", str(rest.pop("deepspeed"))
    elif rest.get("fsdp") and not rest.get("deepspeed") and isinstance(rest["fsdp"], str):
        values["engine"], values["fsdp"] = "fsdp", rest.pop("fsdp")
    else:
        values["engine"] = "none"
    for key, value in BOARD_KEYS.items():
        if rest.get(key) == value:
            rest.pop(key)
    size = values.get("sequence_parallel_size") or 1
    values["nproc"] = int(nproc if nproc is not None else size)
    values["extra"] = yaml.safe_dump(rest, sort_keys=False, allow_unicode=True) if rest else ""
    return values


# -- the YAML file ----------------------------------------------------------------------------

_NPROC_LINE = re.compile(r"^#.*\bNPROC_PER_NODE=(\d+)", re.MULTILINE)


def command_line(config_path: str, nproc: int) -> str:
    """The shell command that runs this config, as a user would type it."""
    return (f"NPROC_PER_NODE={nproc} " if nproc > 1 else "") + f"ulysses-pro train {config_path}"


def to_yaml(config: dict[str, Any], nproc: int, path: str = "THIS.yaml") -> str:
    """The config as the CLI reads it, headed by a comment with the command (and process count)."""
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return f"# written by ulysses-pro webui; run it with:\n#   {command_line(path, nproc)}\n{body}"


def from_yaml(text: str) -> tuple[dict[str, Any], int | None]:
    """(config dict, process count from the header comment when there is one)."""
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise FormError(f"config: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise FormError("config: expected a YAML mapping of LLaMA-Factory keys")
    found = _NPROC_LINE.search(text)
    return config, int(found.group(1)) if found else None

"""Reading a config file and command-line overrides into one flat, typed dict."""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem, phrased so the user knows which key to change and how."""


@dataclass(frozen=True)
class Setting:
    """One key's raw value and where it came from (for error messages)."""

    value: Any
    origin: str


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_KEY_VALUE = re.compile(r"^-{0,2}([A-Za-z_][\w.-]*)=(.*)$", re.DOTALL)


def normalize_key(key: str) -> str:
    """`--adjust-lr` and `adjust_lr` name the same key."""
    return key.lstrip("-").replace("-", "_")


def read_config_file(path: str | Path) -> dict[str, Setting]:
    """Load a YAML or JSON mapping, remembering the line of every top-level key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        # YAML is a superset of JSON, so one parser (with line marks) serves both.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML/JSON: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}"
        )
    lines = {}
    if isinstance(root, yaml.MappingNode):
        for key_node, _ in root.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return {normalize_key(str(k)): Setting(v, f"{path}:{lines.get(str(k), '?')}") for k, v in data.items()}


def parse_scalar(text: str) -> Any:
    """Interpret a command-line value the way YAML would (`true`, `null`, `3`, `0.1`, strings)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def parse_cli_tokens(tokens: list[str]) -> tuple[str | None, dict[str, Setting]]:
    """Split argv into (config file, overrides); accepts `key=value`, `--key=value` and `--key value`.

    A `--flag` followed by nothing, by another `--key` or by a `key=value` token is a boolean true,
    so `--do_train --debug` and `--adjust-lr --config_file x.yaml` both read naturally.
    """
    config_file: str | None = None
    overrides: dict[str, Setting] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        match = _KEY_VALUE.match(token)
        if match:
            key, raw = normalize_key(match.group(1)), match.group(2)
        elif token.startswith("--"):
            key = normalize_key(token)
            if i < len(tokens) and not tokens[i].startswith("--") and not _KEY_VALUE.match(tokens[i]):
                raw = tokens[i]
                i += 1
            else:
                raw = "true"
        elif token.endswith(CONFIG_SUFFIXES):
            if config_file is not None:
                raise ConfigError(f"two config files given: {config_file} and {token}; pass one")
            config_file = token
            continue
        else:
            raise ConfigError(
                f"cannot read command-line argument {token!r}: expected a .yaml/.json config file, "
                "key=value or --key value"
            )
        if key in ("config_file", "config"):
            if config_file is not None:
                raise ConfigError(f"two config files given: {config_file} and {raw}; pass one")
            config_file = raw
            continue
        overrides[key] = Setting(parse_scalar(raw), f"command line ({token})")
    return config_file, overrides


_TYPE_WORDS = {bool: "boolean (true or false)", int: "integer", float: "number", str: "string"}


def _describe(annotation: Any) -> str:
    if annotation in _TYPE_WORDS:
        return _TYPE_WORDS[annotation]
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def coerce(key: str, setting: Setting, annotation: Any) -> Any:
    """Convert a raw value to the field's annotated type, or raise naming the key and its origin."""
    value = setting.value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is str):
            try:
                return coerce(key, setting, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{setting.origin}: {key} cannot be null")
    if annotation is Any or annotation is None:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return annotation(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in annotation)
            raise ConfigError(f"{setting.origin}: {key}={value!r} is not one of: {choices}") from None
    elif origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
    elif origin is dict or annotation is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigError(f"{setting.origin}: {key}={value!r} is not valid; expected a {_describe(annotation)}")

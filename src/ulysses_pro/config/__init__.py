"""Configuration: LLaMA-Factory keys from YAML/JSON plus command-line overrides."""

from .args import DataArguments, FinetuningArguments, ModelArguments, ParallelArguments, ProArguments
from .loader import RunConfig, known_keys, load_config
from .parsing import ConfigError, parse_cli_tokens

__all__ = [
    "ConfigError",
    "DataArguments",
    "FinetuningArguments",
    "ModelArguments",
    "ParallelArguments",
    "ProArguments",
    "RunConfig",
    "known_keys",
    "load_config",
    "parse_cli_tokens",
]

"""The checks `ulysses-pro train` runs before anything starts, run by the board on the form's config,
with the CLI's own one-line messages; and the data preview `ulysses-pro preview` prints."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..config import ConfigError, RunConfig, load_config
from ..data.errors import DataError
from .form import to_yaml


class InputError(ValueError):
    """Bad input, as the one line the CLI prints for it."""


def check_config(config: dict, nproc: int, config_path: str) -> RunConfig:
    """`load_config` then `preflight` on `config` as it would be written to `config_path`.

    The YAML goes to a temporary file first, so nothing is created before the checks pass; messages
    name `config_path` and its lines, as the CLI's do when it reads that file.
    """
    from ..train.preflight import preflight

    with tempfile.TemporaryDirectory(prefix="ulysses-pro-webui-") as folder:
        path = Path(folder) / Path(config_path).name
        path.write_text(to_yaml(config, nproc, config_path), encoding="utf-8")
        try:
            loaded = load_config(str(path))
            # `train` runs preflight once before its workers start, for the whole world.
            preflight(loaded, nproc)
        except (ConfigError, DataError) as err:
            raise InputError(f"config error: {str(err).replace(str(path), config_path)}") from None
    loaded.config_file = config_path
    return loaded


def preview_text(config: RunConfig, rows: int = 3) -> str:
    """The first `rows` training rows as the model sees them (`ulysses-pro preview`'s text)."""
    from ..commands.preview import describe, preview_rows

    try:
        tokenizer, found = preview_rows(config, max(1, rows))
    except (ConfigError, DataError) as err:
        raise InputError(f"{type(err).__name__}: {err}") from None
    return "\n\n".join(describe(tokenizer, ref, row, color=False) for ref, row in found) or "(no rows)"

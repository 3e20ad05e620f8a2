"""Shared fixtures: everything is built locally (no hub, no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LF_DATA = REPO.parent / "shared" / "lf-data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from ulysses_pro.models.tokenizer import load_builtin_tokenizer

    return load_builtin_tokenizer()


@pytest.fixture
def write_dataset(tmp_path):
    """Write rows plus a dataset_info.json entry; returns the dataset_dir."""

    def write(
        name: str, rows, entry: dict | None = None, suffix: str = ".json", raw: str | None = None
    ) -> Path:
        file = tmp_path / f"{name}{suffix}"
        if raw is not None:
            file.write_text(raw, encoding="utf-8")
        elif suffix == ".jsonl":
            file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        else:
            file.write_text(json.dumps(rows), encoding="utf-8")
        info_path = tmp_path / "dataset_info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        info[name] = {"file_name": file.name, **(entry or {})}
        info_path.write_text(json.dumps(info), encoding="utf-8")
        return tmp_path

    return write

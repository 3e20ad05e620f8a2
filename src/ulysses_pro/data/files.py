"""Reading JSON, JSONL and plain-text dataset files into (RowRef, row) pairs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, RowRef

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".txt")


def dataset_files(path: Path) -> list[Path]:
    """The files a dataset path names: itself, or the supported files of a folder, sorted."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUPPORTED_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder holds no {', '.join(SUPPORTED_SUFFIXES)} files")
        return files
    if not path.is_file():
        raise DataError(
            f"{path}: dataset file not found (check file_name in dataset_info.json and dataset_dir)"
        )
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(SUPPORTED_SUFFIXES)}")
    return [path]


def _json_error(path: Path, err: json.JSONDecodeError, line_offset: int = 0) -> DataError:
    return DataError(f"{path}:{err.lineno + line_offset}:{err.colno}: invalid JSON: {err.msg}")


def _read_one(path: Path) -> Iterator[tuple[RowRef, Any]]:
    name = str(path)
    if path.suffix == ".txt":
        # One document per non-empty line, as LLaMA-Factory's text loader does.
        index = 0
        with path.open(encoding="utf-8") as handle:  # line by line: streaming never loads the file
            for line in handle:
                line = line.rstrip("\r\n")
                if line.strip():
                    yield RowRef(name, index), {"text": line}
                    index += 1
        return
    if path.suffix == ".jsonl":
        index = 0
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise _json_error(path, err, line_offset=line_number - 1) from None
                yield RowRef(name, index), row
                index += 1
        return
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # Many "JSON" datasets are really JSON lines; accept them when every line parses.
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            rows = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            raise _json_error(path, err) from None
        data = rows
    if isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON list of rows at the top level, got an object")
    for index, row in enumerate(data):
        yield RowRef(name, index), row


def read_rows(path: str | Path) -> Iterator[tuple[RowRef, Any]]:
    """Yield every row of a dataset file (or folder of files) with its reference."""
    for file in dataset_files(Path(path)):
        yield from _read_one(file)

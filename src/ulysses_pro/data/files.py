"""Reading JSON, JSONL and plain-text dataset files into (RowRef, row) pairs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, RowRef

STRICT_SUFFIXES = (".json", ".jsonl", ".txt")  # read here, with file:line in errors
SUPPORTED_SUFFIXES = (*STRICT_SUFFIXES, ".csv", ".parquet", ".arrow")  # the rest: Hugging Face datasets


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


def read_file_rows(path: Path) -> Iterator[tuple[RowRef, Any]]:
    """The rows of one JSON, JSONL or text file."""
    name = str(path)
    if path.suffix == ".txt":
        # One document per non-empty line, as LLaMA-Factory's text loader does.
        index = 0
        with path.open(encoding="utf-8") as handle:  # line by line: streaming never loads the file
            for line_number, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield RowRef(name, index, line_number), {"text": line}
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
                yield RowRef(name, index, line_number), row
                index += 1
        return
    text = path.read_text(encoding="utf-8")
    start = _skip_space(text, 0)
    if start < len(text) and text[start] == "[":
        yield from _json_array_rows(path, text, start)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # Many "JSON" datasets are really JSON lines; accept them when every line parses.
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((line_number, json.loads(line)))
                except json.JSONDecodeError:
                    raise _json_error(path, err) from None
        for index, (line_number, row) in enumerate(rows):
            yield RowRef(name, index, line_number), row
        return
    if isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON list of rows at the top level, got an object")
    raise DataError(f"{path}: expected a JSON list of rows at the top level, got {type(data).__name__}")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _json_array_rows(path: Path, text: str, start: int) -> Iterator[tuple[RowRef, Any]]:
    """The elements of a top-level JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()
    name = str(path)
    position = _skip_space(text, start + 1)
    line, counted_to = 1, 0
    index = 0
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            row, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise _json_error(path, err) from None
        line += text.count("\n", counted_to, position)
        counted_to = position
        yield RowRef(name, index, line), row
        index += 1
        position = _skip_space(text, end)
        if position < len(text) and text[position] == ",":
            position = _skip_space(text, position + 1)
            continue
        if position < len(text) and text[position] == "]":
            trailing = _skip_space(text, position + 1)
            if trailing == len(text):
                return
            err = json.JSONDecodeError("Extra data after the top-level list", text, trailing)
            raise _json_error(path, err)
        err = json.JSONDecodeError("Expecting ',' delimiter or ']'", text, position)
        raise _json_error(path, err)


def read_rows(path: str | Path) -> Iterator[tuple[RowRef, Any]]:
    """Yield every row of a JSON / JSONL / text file (or a folder of them) with its reference."""
    for file in dataset_files(Path(path)):
        yield from read_file_rows(file)

"""dataset_info.json with LLaMA-Factory's schema."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

FORMATTINGS = ("alpaca", "sharegpt")
DEFAULT_COLUMNS = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": None,
        "system": None,
        "tools": None,
    },
    "sharegpt": {"messages": "conversations", "system": None, "tools": None},
}
DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
_COLUMN_KEYS = {
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "chosen",
    "rejected",
    "kto_tag",
}
_REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


@dataclass
class DatasetSpec:
    """One entry of dataset_info.json, with defaults filled in."""

    name: str
    path: Path
    formatting: str = "alpaca"
    ranking: bool = False
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def column(self, key: str) -> str | None:
        return self.columns.get(key)


def _parse_entry(name: str, entry: Any, dataset_dir: Path, info_path: Path) -> DatasetSpec:
    where = f"{info_path} entry {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name, got {type(entry).__name__}")
    if "file_name" not in entry:
        remote = next((k for k in _REMOTE_KEYS if k in entry), None)
        if remote:
            raise DataError(
                f"{where}: {remote} datasets need the network, which Ulysses Pro never uses at run time; "
                "download the files and point file_name at them"
            )
        raise DataError(f"{where}: missing file_name")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {', '.join(FORMATTINGS)}")
    columns = dict(DEFAULT_COLUMNS[formatting])
    user_columns = entry.get("columns", {}) or {}
    unknown = set(user_columns) - _COLUMN_KEYS
    if unknown:
        raise DataError(f"{where}: unknown column keys {sorted(unknown)}; valid: {sorted(_COLUMN_KEYS)}")
    columns.update(user_columns)
    tags = dict(DEFAULT_TAGS)
    user_tags = entry.get("tags", {}) or {}
    unknown = set(user_tags) - set(DEFAULT_TAGS)
    if unknown:
        raise DataError(f"{where}: unknown tag keys {sorted(unknown)}; valid: {sorted(DEFAULT_TAGS)}")
    tags.update(user_tags)
    return DatasetSpec(
        name=name,
        path=dataset_dir / entry["file_name"],
        formatting=formatting,
        ranking=bool(entry.get("ranking", False)),
        columns=columns,
        tags=tags,
    )


def load_dataset_specs(names: str | list[str], dataset_dir: str | Path) -> list[DatasetSpec]:
    """Resolve comma-separated dataset names through `dataset_dir/dataset_info.json`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    dataset_dir = Path(dataset_dir)
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise DataError(f"{info_path}: not found; set dataset_dir to the folder holding dataset_info.json")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{info_path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    specs = []
    for name in names:
        if name not in info:
            close = difflib.get_close_matches(name, list(info), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{info_path}: dataset {name!r} is not defined{hint}")
        specs.append(_parse_entry(name, info[name], dataset_dir, info_path))
    return specs

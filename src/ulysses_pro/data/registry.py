"""dataset_info.json with LLaMA-Factory's schema: local files (`file_name`), the Hugging Face hub
(`hf_hub_url`, or every name with `dataset_dir: ONLINE`), ModelScope / Modelers (`ms_hub_url`,
`om_hub_url`), a folder or dataset under `dataset_dir` (`script_url`) and fsspec URLs
(`cloud_file_name`); `subset`, `split`, `folder`, `num_samples` as LLaMA-Factory reads them."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

FORMATTINGS = ("alpaca", "sharegpt", "openai")
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
    "openai": {"messages": "messages", "system": None, "tools": None},
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
# LLaMA-Factory keeps sharegpt's tags for openai rows unless an entry sets them; OpenAI's own names
# are the useful default (an entry that sets tags reads the same either way).
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}
MEDIA_COLUMNS = ("images", "videos", "audios")
ONLINE = "ONLINE"
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
    *MEDIA_COLUMNS,
}


@dataclass
class DatasetSpec:
    """One entry of dataset_info.json, with defaults filled in."""

    name: str
    path: Path  # file_name under dataset_dir; for other sources, where they are read from
    formatting: str = "alpaca"
    ranking: bool = False
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    load_from: str = "file"  # file | hf_hub | ms_hub | om_hub | script | cloud_file
    location: str | None = None  # the hub id, script folder or URL (None for files)
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None

    def column(self, key: str) -> str | None:
        return self.columns.get(key)


def _source(entry: dict, where: str, dataset_dir: Path) -> tuple[str, str | None, Path]:
    """(load_from, location, path), with LLaMA-Factory's precedence: a hub url, then script_url, then
    cloud_file_name, then file_name. ModelScope / Modelers are chosen over the Hugging Face hub only
    with USE_MODELSCOPE_HUB / USE_OPENMIND_HUB, or when they are the only hub given."""
    hf, ms, om = entry.get("hf_hub_url"), entry.get("ms_hub_url"), entry.get("om_hub_url")
    if hf or ms or om:
        if ms and (_env_flag("USE_MODELSCOPE_HUB") or not hf):
            return "ms_hub", ms, Path(ms)
        if om and (_env_flag("USE_OPENMIND_HUB") or not hf):
            return "om_hub", om, Path(om)
        return "hf_hub", hf, Path(hf)
    if "script_url" in entry:
        return "script", entry["script_url"], dataset_dir / entry["script_url"]
    if "cloud_file_name" in entry:
        return "cloud_file", entry["cloud_file_name"], Path(entry["cloud_file_name"])
    if "file_name" in entry:
        return "file", None, dataset_dir / entry["file_name"]
    raise DataError(
        f"{where}: missing file_name (or hf_hub_url, ms_hub_url, om_hub_url, script_url, cloud_file_name)"
    )


def _env_flag(name: str) -> bool:
    import os

    return os.environ.get(name, "0").lower() in ("1", "true", "y", "yes")


def _parse_entry(name: str, entry: Any, dataset_dir: Path, info_path: Path | str) -> DatasetSpec:
    where = f"{info_path} entry {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with file_name, got {type(entry).__name__}")
    load_from, location, path = _source(entry, where, dataset_dir)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(f"{where}: formatting {formatting!r} is not one of {', '.join(FORMATTINGS)}")
    columns = dict(DEFAULT_COLUMNS[formatting])
    user_columns = entry.get("columns", {}) or {}
    unknown = set(user_columns) - _COLUMN_KEYS
    if unknown:
        raise DataError(f"{where}: unknown column keys {sorted(unknown)}; valid: {sorted(_COLUMN_KEYS)}")
    if user_columns.get("audios"):
        raise DataError(
            f"{where}: column 'audios' ({user_columns['audios']!r}): audio inputs are not supported; "
            "images and videos are (data/multimodal)"
        )
    columns.update(user_columns)
    tags = dict(OPENAI_TAGS if formatting == "openai" else DEFAULT_TAGS)
    user_tags = entry.get("tags", {}) or {}
    unknown = set(user_tags) - set(DEFAULT_TAGS)
    if unknown:
        raise DataError(f"{where}: unknown tag keys {sorted(unknown)}; valid: {sorted(DEFAULT_TAGS)}")
    tags.update(user_tags)
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise DataError(f"{where}: num_samples must be a positive integer, got {num_samples!r}")
    return DatasetSpec(
        name=name,
        path=path,
        formatting=formatting,
        ranking=bool(entry.get("ranking", False)),
        columns=columns,
        tags=tags,
        load_from=load_from,
        location=location,
        subset=entry.get("subset"),
        split=entry.get("split", "train"),
        folder=entry.get("folder"),
        num_samples=num_samples,
    )


def load_dataset_specs(names: str | list[str], dataset_dir: str | Path) -> list[DatasetSpec]:
    """Resolve comma-separated dataset names through `dataset_dir/dataset_info.json`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if str(dataset_dir) == ONLINE:
        # LLaMA-Factory: every name is a hub dataset id, read as alpaca rows.
        return [_parse_entry(name, {"hf_hub_url": name}, Path("."), "dataset_dir: ONLINE") for name in names]
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

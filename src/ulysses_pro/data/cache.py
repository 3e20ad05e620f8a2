"""`tokenized_path`: save the tokenized splits once, reload them on later runs.

The cache is a folder: `meta.json` (the settings it was built from, row counts, sample prompts) and
one safetensors file per split, each row field stored flat with offsets. It is written to a
temporary folder and renamed into place, so an interrupted run never leaves a half cache that a
later run would trust. A cache built from other settings is refused with the settings that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .columns import ColumnarRows
from .errors import DataError
from .files import dataset_files
from .registry import load_dataset_specs

CACHE_FORMAT = 3  # 2: list fields stored as int32; 3: LLaMA-Factory templates and truncation
# Data settings that change the tokenized rows; anything else may differ between runs.
SETTING_KEYS = (
    "dataset",
    "eval_dataset",
    "template",
    "enable_thinking",
    "preserve_thinking",
    "tool_format",
    "cutoff_len",
    "max_samples",
    "val_size",
    "train_on_prompt",
    "mask_history",
    "packing",
    "neat_packing",
    "mix_strategy",
    "interleave_probs",
    "default_system",
    "skip_invalid_rows",
)


def _tokenizer_digest(tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(
        json.dumps([tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id]).encode()
    )
    digest.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return digest.hexdigest()[:16]


def _file_stats(names: str | None, dataset_dir: str) -> dict[str, list]:
    stats = {}
    for spec in load_dataset_specs(names, dataset_dir) if names else []:
        if spec.load_from != "file":
            # A hub dataset is named by what selects it; a new revision upstream is not seen here.
            stats[f"{spec.load_from}:{spec.location}"] = [
                spec.subset,
                spec.split,
                spec.folder,
                spec.num_samples,
            ]
            continue
        for file in dataset_files(spec.path):
            info = file.stat()
            stats[str(file)] = [info.st_size, info.st_mtime_ns]
    return stats


def fingerprint(data_args, tokenizer, stage: str, seed: int) -> dict[str, Any]:
    """What the cached rows depend on: settings, data files (size, mtime), tokenizer, stage, seed."""
    settings = {key: getattr(data_args, key) for key in SETTING_KEYS}
    files = {
        **_file_stats(data_args.dataset, data_args.dataset_dir),
        **_file_stats(data_args.eval_dataset, data_args.dataset_dir),
    }
    return {
        "format": CACHE_FORMAT,
        "stage": stage,
        "seed": seed,
        "tokenizer": _tokenizer_digest(tokenizer),
        "files": files,
        **settings,
    }


def save_cache(
    path: str | Path, splits: dict[str, ColumnarRows | None], samples: list[dict], built_from: dict[str, Any]
) -> None:
    """Write the splits (None = absent) atomically into `path`."""
    target = Path(path)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    meta: dict[str, Any] = {"fingerprint": built_from, "samples": samples, "splits": {}}
    for name, rows in splits.items():
        if not rows:
            continue
        save_file(rows.columns, str(staging / f"{name}.safetensors"))
        meta["splits"][name] = {"rows": len(rows), "fields": rows.kinds}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def cache_exists(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file()


def load_cache(
    path: str | Path, expected: dict[str, Any]
) -> tuple[dict[str, ColumnarRows | None], list[dict]]:
    """The cached splits and sample prompts; DataError when they were built from other settings."""
    folder = Path(path)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    stored = meta["fingerprint"]
    differing = sorted(key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key))
    if differing:
        details = "; ".join(
            f"{key}: cached {_short(stored.get(key))}, now {_short(expected.get(key))}" for key in differing
        )
        raise DataError(
            f"{folder}: tokenized_path was built from other settings ({details}); "
            "set overwrite_cache: true to rebuild it, or point tokenized_path elsewhere"
        )
    splits: dict[str, ColumnarRows | None] = {"train": None, "eval": None}
    for name, info in meta["splits"].items():
        splits[name] = ColumnarRows(
            load_file(str(folder / f"{name}.safetensors")), info["fields"], info["rows"]
        )
    return splits, meta["samples"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""Rows of one dataset_info.json entry, from wherever it lives.

Local JSON, JSONL and text files are read by `files.py` (strict, with file:line in errors). CSV,
Parquet and Arrow files, hub datasets (Hugging Face; ModelScope and Modelers when their client is
installed), `script_url` folders and fsspec URLs (`cloud_file_name`) go through Hugging Face
`datasets`, as in LLaMA-Factory. `num_samples` resamples an entry as LLaMA-Factory does: a seeded
permutation (every row once), then seeded draws with replacement for the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, RowRef
from .files import STRICT_SUFFIXES, dataset_files, read_file_rows
from .registry import DatasetSpec

DATASETS_FILE_TYPES = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def check_source(spec: DatasetSpec) -> None:
    """What can be checked before reading a row: local files exist, a hub client is installed."""
    if spec.load_from == "file":
        dataset_files(spec.path)
    elif spec.load_from in ("ms_hub", "om_hub"):
        _hub_client(spec)
    elif spec.load_from == "script" and spec.path.suffix == ".py":
        raise DataError(
            f"dataset {spec.name!r}: script_url {spec.location!r} is a loading script, which Hugging Face "
            "datasets no longer runs; point script_url at a folder of data files"
        )


def _hub_client(spec: DatasetSpec):
    package = {"ms_hub": "modelscope", "om_hub": "openmind"}[spec.load_from]
    try:
        return __import__(package)
    except ImportError:
        raise DataError(
            f"dataset {spec.name!r}: {spec.load_from}_url needs the {package} package (pip install {package}); "
            "or give the entry an hf_hub_url"
        ) from None


def _datasets():
    try:
        import datasets
    except ImportError:  # a dependency; only a broken install lacks it
        raise DataError("reading this dataset needs Hugging Face datasets: pip install datasets") from None
    return datasets


def _load(spec: DatasetSpec, streaming: bool, cache_dir: str | None, token: str | None):
    datasets = _datasets()
    common = dict(split=spec.split, cache_dir=cache_dir, token=token)
    try:
        if spec.load_from == "ms_hub":
            dataset = _hub_client(spec).MsDataset.load(
                dataset_name=spec.location,
                subset_name=spec.subset,
                data_dir=spec.folder,
                split=spec.split,
                use_streaming=streaming,
            )
            return dataset.to_hf_dataset() if hasattr(dataset, "to_hf_dataset") else dataset
        if spec.load_from == "om_hub":
            return _hub_client(spec).OmDataset.load_dataset(
                path=spec.location, name=spec.subset, data_dir=spec.folder, streaming=streaming, **common
            )
        if spec.load_from == "cloud_file":
            kind = (
                "json"
                if not spec.location.endswith((".csv", ".parquet"))
                else spec.location.rsplit(".", 1)[1]
            )
            return datasets.load_dataset(kind, data_files=spec.location, streaming=streaming, **common)
        path = str(spec.path) if spec.load_from == "script" else spec.location
        return datasets.load_dataset(
            path, name=spec.subset, data_dir=spec.folder, streaming=streaming, **common
        )
    except DataError:
        raise
    except ImportError as err:  # an fsspec protocol (s3fs, gcsfs) or format reader is missing
        raise DataError(f"dataset {spec.name!r} ({spec.location}): {err}") from None
    except (FileNotFoundError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"dataset {spec.name!r}: cannot load {spec.location!r} (split {spec.split!r}): {first}"
        ) from None


def _file_rows(path: Path) -> Iterator[tuple[RowRef, Any]]:
    """A CSV / Parquet / Arrow file through `datasets`, rows in file order."""
    datasets = _datasets()
    kind = DATASETS_FILE_TYPES[path.suffix]
    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # a malformed file: name it, whatever the reader raised
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path}: cannot read as {kind}: {first}") from None
    for index, row in enumerate(table):
        # A CSV row's line is index + 2 (after the header) unless a field spans lines; no line is given.
        yield RowRef(str(path), index), row


def _local_rows(spec: DatasetSpec) -> Iterator[tuple[RowRef, Any]]:
    files = dataset_files(spec.path)
    kinds = {
        file.suffix if file.suffix in STRICT_SUFFIXES else DATASETS_FILE_TYPES[file.suffix] for file in files
    }
    if len(kinds) > 1 and not kinds <= set(STRICT_SUFFIXES):
        raise DataError(f"{spec.path}: a dataset folder must hold one file type, found {sorted(kinds)}")
    for file in files:
        yield from (read_file_rows(file) if file.suffix in STRICT_SUFFIXES else _file_rows(file))


def _remote_rows(spec: DatasetSpec, streaming: bool, cache_dir: str | None, token: str | None):
    dataset = _load(spec, streaming, cache_dir, token)
    name = f"{spec.location} [{spec.split}]"
    for index, row in enumerate(dataset):
        yield RowRef(name, index), dict(row)


def resample(rows: list, count: int, seed: int) -> list:
    """LLaMA-Factory's `num_samples`: a permutation of every row (cut to `count`), then draws with
    replacement for the remainder; seeded."""
    import numpy as np

    rng = np.random.RandomState(seed)
    order = rng.permutation(len(rows))[:count]
    extra = rng.choice(len(rows), count - len(order)) if count > len(order) else np.array([], dtype=int)
    return [rows[int(i)] for i in np.concatenate([order, extra])]


def spec_rows(
    spec: DatasetSpec,
    *,
    seed: int = 42,
    streaming: bool = False,
    cache_dir: str | None = None,
    token: str | None = None,
) -> Iterator[tuple[RowRef, Any]]:
    """Every row of the entry, with where it came from; `num_samples` applied (not when streaming)."""
    check_source(spec)
    rows = _local_rows(spec) if spec.load_from == "file" else _remote_rows(spec, streaming, cache_dir, token)
    if spec.num_samples is None or streaming:
        yield from rows
        return
    rows = list(rows)
    if not rows:
        return
    yield from resample(rows, spec.num_samples, seed)

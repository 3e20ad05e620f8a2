"""Where rows come from: CSV / Parquet / Arrow files, hub datasets (local stand-ins where a hub id
would go), `script_url` folders, fsspec URLs, `dataset_dir: ONLINE`, `num_samples`, `formatting:
openai`, and the refusals (media columns, missing hub clients, loading scripts)."""

from __future__ import annotations

import json

import pytest

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.pipeline import build_datasets, load_rows
from ulysses_pro.data.registry import load_dataset_specs
from ulysses_pro.data.sources import resample

datasets = pytest.importorskip("datasets")

ROWS = [
    {"instruction": f"Count from 1 to {n}.", "input": "", "output": " ".join(str(i) for i in range(1, n + 1))}
    for n in range(2, 8)
]


def write_info(folder, **entries) -> None:
    (folder / "dataset_info.json").write_text(json.dumps(entries))


def write_table(path, rows) -> None:
    table = datasets.Dataset.from_list(rows)
    if path.suffix == ".parquet":
        table.to_parquet(str(path))
    elif path.suffix == ".csv":
        table.to_csv(str(path), index=False)
    else:  # an Arrow IPC stream, the format of datasets' own cache files
        import pyarrow as pa

        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.data.table.schema) as writer:
            writer.write_table(table.data.table)


def sft_rows(folder, name="rows", **keys):
    return build_datasets(
        DataArguments(dataset=name, dataset_dir=str(folder), cutoff_len=64, **keys), tokenizer_(), "sft"
    ).train.rows


def tokenizer_():
    from ulysses_pro.models.tokenizer import load_builtin_tokenizer

    return load_builtin_tokenizer()


def instructions(folder, name="rows", **keys) -> list[str]:
    keys.setdefault("dataset_dir", str(folder))
    items = load_rows(DataArguments(dataset=name, **keys), "sft")
    return [item.messages[0]["content"] for _, item in items]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".arrow"])
def test_parquet_csv_and_arrow_files(tmp_path, suffix):
    write_table(tmp_path / f"rows{suffix}", ROWS)
    write_info(tmp_path, rows={"file_name": f"rows{suffix}"})
    assert instructions(tmp_path) == [row["instruction"] for row in ROWS]
    assert len(sft_rows(tmp_path)) == len(ROWS)


def test_a_folder_of_parquet_shards_reads_in_name_order(tmp_path):
    (tmp_path / "shards").mkdir()
    write_table(tmp_path / "shards" / "b.parquet", ROWS[3:])
    write_table(tmp_path / "shards" / "a.parquet", ROWS[:3])
    write_info(tmp_path, rows={"file_name": "shards"})
    assert instructions(tmp_path) == [row["instruction"] for row in ROWS]


def test_hub_entries_read_a_local_stand_in(tmp_path):
    """`hf_hub_url` with subset (a config folder), split and folder: a local dataset folder where the
    hub id goes, read by `datasets.load_dataset` exactly as the hub id would be."""
    hub = tmp_path / "org--demo"
    (hub / "en").mkdir(parents=True)
    write_table(hub / "en" / "train.parquet", ROWS[:4])
    write_table(hub / "en" / "validation.parquet", ROWS[4:])
    write_info(
        tmp_path,
        train={"hf_hub_url": str(hub), "folder": "en"},
        val={"hf_hub_url": str(hub), "folder": "en", "split": "validation"},
    )
    assert instructions(tmp_path, "train") == [r["instruction"] for r in ROWS[:4]]
    assert instructions(tmp_path, "val") == [r["instruction"] for r in ROWS[4:]]
    assert len(sft_rows(tmp_path, "val")) == 2
    (spec,) = load_dataset_specs("val", tmp_path)
    assert (spec.load_from, spec.split, spec.folder) == ("hf_hub", "validation", "en")


def test_dataset_dir_online_takes_names_as_hub_ids(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    assert instructions(tmp_path, name=str(tmp_path), dataset_dir="ONLINE") == [
        r["instruction"] for r in ROWS
    ]


def test_script_url_folder_and_cloud_url(tmp_path):
    (tmp_path / "local_ds").mkdir()
    write_table(tmp_path / "local_ds" / "train.csv", ROWS)
    (tmp_path / "remote.json").write_text(json.dumps(ROWS))
    write_info(
        tmp_path,
        folder_ds={"script_url": "local_ds"},
        cloud={"cloud_file_name": f"file://{tmp_path / 'remote.json'}"},
        script={"script_url": "builder.py"},
    )
    expected = [r["instruction"] for r in ROWS]
    assert instructions(tmp_path, "folder_ds") == expected
    assert instructions(tmp_path, "cloud") == expected
    with pytest.raises(DataError, match="is a loading script, which Hugging Face datasets no longer runs"):
        instructions(tmp_path, "script")


def test_modelscope_entries_need_their_client(tmp_path):
    try:
        import modelscope  # noqa: F401

        pytest.skip("modelscope is installed here")
    except ImportError:
        pass
    write_info(
        tmp_path, ms={"ms_hub_url": "AI-ModelScope/adgen"}, both={"hf_hub_url": "x/y", "ms_hub_url": "a/b"}
    )
    with pytest.raises(
        DataError, match=r"ms_hub_url needs the modelscope package \(pip install modelscope\)"
    ):
        instructions(tmp_path, "ms")
    (spec,) = load_dataset_specs("both", tmp_path)
    assert spec.load_from == "hf_hub"  # LLaMA-Factory's choice when USE_MODELSCOPE_HUB is unset


def test_num_samples_resamples_like_llamafactory(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    write_info(
        tmp_path,
        fewer={"file_name": "rows.json", "num_samples": 4},
        more={"file_name": "rows.json", "num_samples": 15},
    )
    fewer = instructions(tmp_path, "fewer")
    assert len(fewer) == 4 and len(set(fewer)) == 4  # a permutation's prefix: no repeats
    more = instructions(tmp_path, "more")
    assert len(more) == 15 and set(more) == {r["instruction"] for r in ROWS}  # every row at least once
    assert instructions(tmp_path, "more") == more  # seeded
    assert resample(list(range(6)), 15, seed=1) != resample(list(range(6)), 15, seed=2)


OPENAI_ROW = {
    "messages": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                {"type": "function", "function": {"name": "weather", "arguments": {"city": "Bergen"}}},
            ],
        },
        {"role": "tool", "content": '{"temp": 4}'},
        {"role": "tool", "content": '{"temp": 7}'},
        {"role": "assistant", "content": "Oslo 4C, Bergen 7C."},
    ],
    "tools": '[{"name": "weather", "description": "Current weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]',
}


def test_openai_rows_with_tool_calls_and_tool_responses(tmp_path):
    (tmp_path / "chat.json").write_text(json.dumps([OPENAI_ROW]))
    write_info(
        tmp_path, chat={"file_name": "chat.json", "formatting": "openai", "columns": {"tools": "tools"}}
    )
    ((_, item),) = load_rows(DataArguments(dataset="chat", dataset_dir=str(tmp_path)), "sft")
    assert [m["role"] for m in item.messages] == ["system", "user", "function", "tool", "assistant"]
    calls = json.loads(item.messages[2]["content"])
    assert [c["arguments"]["city"] for c in calls] == ["Oslo", "Bergen"]
    assert item.messages[3]["content"] == '{"temp": 4}\n</tool_response>\n<tool_response>\n{"temp": 7}'
    tokenizer = tokenizer_()
    (row,) = build_datasets(
        DataArguments(dataset="chat", dataset_dir=str(tmp_path), template="qwen", cutoff_len=1024),
        tokenizer,
        "sft",
    ).train.rows
    text = tokenizer.decode(row["input_ids"])
    assert (
        "# Tools" in text
        and '<tool_call>\n{"name": "weather", "arguments": {"city": "Bergen"}}\n</tool_call>' in text
    )
    trained = tokenizer.decode([t for t in row["shift_labels"] if t != -100])
    assert "<tool_call>" in trained and "Oslo 4C" in trained and "temp" not in trained


def test_image_columns_are_read_and_audio_columns_refused_by_name(tmp_path):
    write_info(
        tmp_path,
        mm={"file_name": "mm.json", "formatting": "sharegpt", "columns": {"images": "images"}},
        sound={"file_name": "s.json", "formatting": "sharegpt", "columns": {"audios": "audios"}},
    )
    assert load_dataset_specs("mm", tmp_path)[0].column("images") == "images"
    with pytest.raises(DataError, match=r"column 'audios' \('audios'\): audio inputs are not supported"):
        load_dataset_specs("sound", tmp_path)


@pytest.mark.parametrize("source", ["hub parquet", "csv", "arrow"])
def test_hub_style_csv_and_arrow_sources_train(tmp_path, source):
    from ..train.harness import run_training

    if source == "hub parquet":
        (tmp_path / "org--ds" / "data").mkdir(parents=True)
        write_table(tmp_path / "org--ds" / "data" / "train-00000-of-00001.parquet", ROWS * 4)
        write_info(tmp_path, rows={"hf_hub_url": str(tmp_path / "org--ds")})
    else:
        write_table(tmp_path / f"rows.{source}", ROWS * 4)
        write_info(tmp_path, rows={"file_name": f"rows.{source}"})
    result = run_training(
        dataset="rows",
        dataset_dir=str(tmp_path),
        template="chatml",
        cutoff_len=64,
        max_steps=3,
        per_device_train_batch_size=4,
        output_dir=str(tmp_path / "out"),
    )
    assert len(result["losses"]) == 3 and all(loss > 0 for loss in result["losses"])


def test_every_entry_of_llamafactory_dataset_info_is_read_or_refused_by_name():
    from ..conftest import LF_DATA

    if not (LF_DATA / "dataset_info.json").is_file():
        pytest.skip("LLaMA-Factory demo data not present")
    info = json.loads((LF_DATA / "dataset_info.json").read_text())
    sources, refused = {}, {}
    for name in info:
        try:
            (spec,) = load_dataset_specs(name, LF_DATA)
            sources[spec.load_from] = sources.get(spec.load_from, 0) + 1
        except DataError as err:
            refused[name] = str(err)
    # The entries with audio are the only ones refused, each naming its column (images, videos are read).
    assert refused and all(
        "column 'audios' ('audios'): audio inputs are not supported" in m for m in refused.values()
    )
    assert all("audios" in info[name].get("columns", {}) for name in refused)
    assert (
        sources["hf_hub"] > 50 and sources["file"] >= 10 and len(refused) + sum(sources.values()) == len(info)
    )

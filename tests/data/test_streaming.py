"""streaming: true — lazy reading, buffer shuffle, DP shards, held-out rows, a training run."""

from __future__ import annotations

import json
import random
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.pipeline import build_datasets
from ulysses_pro.data.streaming import StreamingDataset, shuffle_buffer


def chat_rows(count: int) -> list[dict]:
    return [{"instruction": f"Question {i}?", "output": f"Answer number {i}."} for i in range(count)]


def key(row: dict) -> tuple:
    return tuple(row["input_ids"])


def one_pass(dataset: StreamingDataset, rows: int) -> list[dict]:
    return list(islice(iter(dataset), rows))


def test_shuffle_buffer_is_a_seeded_permutation():
    rows = list(range(100))
    assert list(shuffle_buffer(iter(rows), 1, random.Random(0))) == rows
    mixed = list(shuffle_buffer(iter(rows), 16, random.Random(0)))
    assert sorted(mixed) == rows and mixed != rows
    assert mixed == list(shuffle_buffer(iter(rows), 16, random.Random(0)))


def test_one_pass_holds_the_same_rows_as_the_in_memory_pipeline(write_dataset, tokenizer):
    folder = write_dataset("chat", chat_rows(40), suffix=".jsonl")
    common = {"dataset": "chat", "dataset_dir": str(folder), "cutoff_len": 64}
    in_memory = build_datasets(DataArguments(**common), tokenizer, "sft").train
    stream = build_datasets(DataArguments(**common, streaming=True, buffer_size=8), tokenizer, "sft").train
    assert isinstance(stream, StreamingDataset)
    first = one_pass(stream, 40)
    assert Counter(map(key, first)) == Counter(map(key, in_memory.rows))
    # The next pass is reshuffled: same rows, another order.
    second = list(islice(iter(stream), 40, 80))
    assert Counter(map(key, second)) == Counter(map(key, first)) and second != first


def test_dp_shards_are_disjoint_and_cover_the_stream(write_dataset, tokenizer):
    folder = write_dataset("chat", chat_rows(30), suffix=".jsonl")
    args = DataArguments(
        dataset="chat", dataset_dir=str(folder), cutoff_len=64, streaming=True, buffer_size=4
    )
    stream = build_datasets(args, tokenizer, "sft").train
    shards = [one_pass(stream.shard(2, rank), 15) for rank in range(2)]
    assert not set(map(key, shards[0])) & set(map(key, shards[1]))
    assert Counter(map(key, shards[0] + shards[1])) == Counter(map(key, one_pass(stream, 30)))
    # Ranks of one SP group share a DP rank, hence the same rows in the same order.
    assert [key(r) for r in one_pass(stream.shard(2, 1), 15)] == [key(r) for r in shards[1]]


def test_rows_are_read_lazily(write_dataset, tokenizer):
    lines = [json.dumps(row) for row in chat_rows(50)] + ["{broken"]
    folder = write_dataset("chat", None, suffix=".jsonl", raw="\n".join(lines) + "\n")
    args = DataArguments(
        dataset="chat", dataset_dir=str(folder), cutoff_len=64, streaming=True, buffer_size=4
    )
    stream = build_datasets(args, tokenizer, "sft").train
    assert len(one_pass(stream, 10)) == 10  # the broken last line has not been read yet
    with pytest.raises(DataError, match=r"chat.jsonl:51:\d+: invalid JSON"):
        one_pass(stream, 60)


def test_val_size_holds_out_the_head_of_the_stream(write_dataset, tokenizer):
    folder = write_dataset("chat", chat_rows(30), suffix=".jsonl")
    args = DataArguments(
        dataset="chat", dataset_dir=str(folder), cutoff_len=64, streaming=True, buffer_size=4, val_size=5
    )
    bundle = build_datasets(args, tokenizer, "sft")
    assert len(bundle.eval) == 5
    held = set(map(key, bundle.eval.rows))
    train = one_pass(bundle.train, 50)
    assert len(set(map(key, train))) == 25 and not held & set(map(key, train))


def test_packed_pretraining_stream(write_dataset, tokenizer):
    folder = write_dataset(
        "text", [{"text": "word " * n} for n in range(1, 60)], {"columns": {"prompt": "text"}}
    )
    args = DataArguments(
        dataset="text", dataset_dir=str(folder), cutoff_len=48, streaming=True, buffer_size=16
    )
    rows = one_pass(build_datasets(args, tokenizer, "pt").train, 20)
    assert all(len(r["input_ids"]) <= 48 and "position_ids" in r for r in rows)


def test_streaming_needs_max_steps_and_a_row_count(tmp_path):
    base = {"model_name_or_path": "tiny:llama", "dataset": "x", "do_train": True, "streaming": True}
    with pytest.raises(ConfigError, match="streaming: true needs max_steps > 0"):
        load_config(base)
    with pytest.raises(ConfigError, match="val_size: with streaming, give a number of rows"):
        load_config({**base, "max_steps": 5, "val_size": 0.1})


def test_training_on_a_stream(tmp_path):
    from tests.train.harness import run_training

    data = str(Path(__file__).resolve().parents[2] / "data")
    result = run_training(
        dataset="demo_tasks",
        dataset_dir=data,
        streaming=True,
        buffer_size=16,
        max_steps=3,
        per_device_train_batch_size=2,
        cutoff_len=64,
        output_dir=str(tmp_path / "out"),
    )
    assert len(result["losses"]) == 3 and all(loss > 0 for loss in result["losses"])


def test_streamed_skips_are_counted_as_they_happen(write_dataset, tokenizer, caplog):
    rows = chat_rows(10)
    rows[3] = {"instruction": "no answer"}
    folder = write_dataset("chat", rows, suffix=".jsonl")
    args = DataArguments(
        dataset="chat",
        dataset_dir=str(folder),
        cutoff_len=64,
        streaming=True,
        buffer_size=1,
        skip_invalid_rows=True,
    )
    with caplog.at_level("WARNING"):
        first_pass = one_pass(build_datasets(args, tokenizer, "sft").train, 9)
    assert len(set(map(key, first_pass))) == 9
    assert "chat.jsonl:4: row 3: missing column 'output'" in caplog.text and "(1 so far)" in caplog.text

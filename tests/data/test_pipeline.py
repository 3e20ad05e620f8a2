"""The whole data path: PT packing and its report, val_size, the tokenized cache, workers, skipping."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.packing import next_fit
from ulysses_pro.data.pipeline import build_datasets

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def text_rows(count: int, seed: int = 0) -> list[dict]:
    """Documents with long-tailed lengths (a few longer than a 64-token row)."""
    rng = random.Random(seed)
    return [
        {"text": " ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.lognormvariate(2.5, 0.9)))))}
        for _ in range(count)
    ]


def chat_rows(count: int) -> list[dict]:
    return [
        {"instruction": f"Question {i}: " + "why " * (i % 7), "output": f"Answer {i}" * (1 + i % 3)}
        for i in range(count)
    ]


def as_tensors(dataset) -> list[dict]:
    return [{k: torch.tensor(v) for k, v in row.items()} for row in dataset.rows]


def assert_same_rows(left, right) -> None:
    assert len(left) == len(right)
    for a, b in zip(left.rows, right.rows):
        assert a == b


def test_pt_best_fit_packing_keeps_documents_whole_and_reports_its_cost(write_dataset, tokenizer):
    rows = text_rows(300)
    folder = write_dataset("corpus", rows, {"columns": {"prompt": "text"}})
    cutoff = 64
    train = build_datasets(
        DataArguments(dataset="corpus", dataset_dir=str(folder), cutoff_len=cutoff), tokenizer, "pt"
    ).train
    assert all(len(row["input_ids"]) <= cutoff for row in train.rows)
    eos = tokenizer.eos_token_id
    lengths = [len(tokenizer.encode(r["text"])) + 1 for r in rows]
    # Every next-token target of every document is trained once: cutting drops nothing.
    assert train.packing_report.trained_tokens == sum(length - 1 for length in lengths)
    assert sum(row["input_ids"].count(eos) for row in train.rows) == len(rows)
    summary = train.packing_report
    long_documents = sum(length > cutoff for length in lengths)
    assert summary.documents == len(rows) and summary.cut_documents == long_documents
    # Concatenating the stream into blocks would cut a document at nearly every block boundary.
    blocks = sum(lengths) // cutoff
    assert summary.cut_documents < 0.5 * blocks
    window_lengths = [len(row) for row in (r["input_ids"] for r in train.rows)]
    assert len(train) <= len(next_fit(sorted(window_lengths), cutoff))
    assert summary.padding_rate < 0.05


@pytest.mark.parametrize("val_size, expected", [(5, 5), (0.25, 10), (0.01, 1)])
def test_val_size_as_a_count_or_a_fraction(write_dataset, tokenizer, val_size, expected):
    folder = write_dataset("chat", chat_rows(40))
    args = DataArguments(dataset="chat", dataset_dir=str(folder), val_size=val_size)
    bundle = build_datasets(args, tokenizer, "sft")
    assert len(bundle.eval) == expected and len(bundle.train) == 40 - expected
    held = {tuple(r["input_ids"]) for r in bundle.eval.rows}
    assert not held & {tuple(r["input_ids"]) for r in bundle.train.rows}
    with pytest.raises(DataError, match="leaves no training rows"):
        build_datasets(DataArguments(dataset="chat", dataset_dir=str(folder), val_size=40), tokenizer, "sft")


@pytest.mark.parametrize("stage", ["pt", "sft", "kto"])
def test_tokenized_cache_reloads_identical_rows(write_dataset, tokenizer, tmp_path, stage, caplog):
    if stage == "pt":
        folder = write_dataset("data", text_rows(50), {"columns": {"prompt": "text"}})
    elif stage == "kto":
        rows = [{**row, "label": i % 3 != 0} for i, row in enumerate(chat_rows(30))]
        folder = write_dataset("data", rows, {"columns": {"kto_tag": "label"}})
    else:
        folder = write_dataset("data", chat_rows(30))
    cache = tmp_path / "cache"
    args = DataArguments(
        dataset="data", dataset_dir=str(folder), cutoff_len=64, val_size=0.2, tokenized_path=str(cache)
    )
    built = build_datasets(args, tokenizer, stage)
    assert (cache / "meta.json").is_file() and not list(tmp_path.glob(".cache.partial-*"))
    with caplog.at_level("INFO"):
        loaded = build_datasets(args, tokenizer, stage)
    assert "loaded from" in caplog.text
    assert_same_rows(built.train, loaded.train)
    assert_same_rows(built.eval, loaded.eval)
    assert [c.messages for c in built.sample_prompts] == [c.messages for c in loaded.sample_prompts]
    # Collated tensors, not just lists, are identical.
    for a, b in zip(as_tensors(built.train), as_tensors(loaded.train)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_built_from_other_settings_is_refused_until_overwritten(write_dataset, tokenizer, tmp_path):
    folder = write_dataset("chat", chat_rows(20))
    cache = str(tmp_path / "cache")
    build_datasets(
        DataArguments(dataset="chat", dataset_dir=str(folder), tokenized_path=cache), tokenizer, "sft"
    )
    longer = DataArguments(dataset="chat", dataset_dir=str(folder), tokenized_path=cache, cutoff_len=32)
    with pytest.raises(DataError, match="cutoff_len: cached 2048, now 32.*overwrite_cache"):
        build_datasets(longer, tokenizer, "sft")
    longer.overwrite_cache = True
    rebuilt = build_datasets(longer, tokenizer, "sft")
    assert max(len(r["input_ids"]) for r in rebuilt.train.rows) <= 32
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["fingerprint"]["cutoff_len"] == 32
    # Editing the data file invalidates the cache too.
    write_dataset("chat", chat_rows(21))
    longer.overwrite_cache = False
    with pytest.raises(DataError, match="files: cached"):
        build_datasets(longer, tokenizer, "sft")


@pytest.mark.parametrize("stage", ["pt", "sft", "dpo"])
def test_two_workers_give_the_same_rows_as_one(write_dataset, tokenizer, stage):
    if stage == "pt":
        folder = write_dataset("data", text_rows(60), {"columns": {"prompt": "text"}})
    elif stage == "dpo":
        rows = [
            {"instruction": r["instruction"], "chosen": r["output"], "rejected": "no " + r["output"]}
            for r in chat_rows(30)
        ]
        folder = write_dataset(
            "data",
            rows,
            {
                "ranking": True,
                "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
            },
        )
    else:
        folder = write_dataset("data", chat_rows(30))

    def build(workers):
        args = DataArguments(
            dataset="data",
            dataset_dir=str(folder),
            cutoff_len=64,
            preprocessing_num_workers=workers,
            preprocessing_batch_size=7,
        )
        return build_datasets(args, tokenizer, stage).train

    assert_same_rows(build(1), build(2))


def test_skip_invalid_rows_counts_what_it_skips(write_dataset, tokenizer, caplog):
    rows = chat_rows(10)
    rows[2] = {"instruction": "no answer"}
    rows[5]["output"] = ""
    folder = write_dataset("chat", rows)
    with pytest.raises(DataError, match=r"chat.json:\d+: row 2: missing column 'output'"):
        build_datasets(DataArguments(dataset="chat", dataset_dir=str(folder)), tokenizer, "sft")
    with caplog.at_level("WARNING"):
        train = build_datasets(
            DataArguments(dataset="chat", dataset_dir=str(folder), skip_invalid_rows=True), tokenizer, "sft"
        ).train
    assert len(train) == 8
    assert "skipped 2 invalid row(s)" in caplog.text and "row 5" in caplog.text


def test_sft_packing_never_lets_documents_see_each_other(write_dataset, tokenizer):
    folder = write_dataset("chat", chat_rows(20))
    for keys in ({"packing": True}, {"neat_packing": True}):
        args = DataArguments(dataset="chat", dataset_dir=str(folder), cutoff_len=128, **keys)
        rows = build_datasets(args, tokenizer, "sft").train.rows
        assert len(rows) < 20
        for row in rows:
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
            # positions restart at every document: one segment per document, no cross-attention
            assert len(starts) == len(row["document_lengths"])
            assert [b - a for a, b in zip(starts, starts[1:] + [len(row["input_ids"])])] == row[
                "document_lengths"
            ]

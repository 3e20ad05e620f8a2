"""`ulysses-pro preview`: the first rows as the model sees them, in print and as LLaMA-Factory rows."""

from __future__ import annotations

import json

import pytest

from ulysses_pro.cli import main
from ulysses_pro.config import load_config
from ulysses_pro.data.pipeline import build_datasets
from ulysses_pro.models.loader import load_tokenizer

from ..conftest import REPO


def preview_config(tmp_path, **keys) -> str:
    config = {
        "model_name_or_path": "tiny:llama",
        "stage": "sft",
        "dataset": "demo_tasks",
        "dataset_dir": str(REPO / "data"),
        "template": "chatml",
        "cutoff_len": 64,
        "output_dir": str(tmp_path / "out"),
        **keys,
    }
    path = tmp_path / "preview.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()))
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_preview_marks_trained_spans_and_writes_llamafactory_rows(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["preview", preview_config(tmp_path), "--rows", "2", "--jsonl", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("sequence: ") == 2 and "⟦" in printed and "2 rows written" in printed
    rows = read_jsonl(out)
    assert len(rows) == 2 and all(set(r) == {"input_ids", "labels"} for r in rows)
    # The same rows training uses: shifting a preview row gives the training document.
    config = load_config(preview_config(tmp_path, max_samples=2))
    documents = build_datasets(config.data, load_tokenizer(config.model), "sft").train.rows
    for row, document in zip(rows, documents):
        assert len(row["input_ids"]) == len(row["labels"])
        assert row["input_ids"] == document["input_ids"]
        assert row["labels"][1:] + [-100] == document["shift_labels"]
        assert row["labels"][0] == -100  # the prompt is masked


@pytest.mark.parametrize(
    ("stage", "dataset", "keys"),
    [
        ("dpo", "demo_pairs", {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}),
        ("kto", "demo_kto", {"input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tag"}),
        ("pt", "demo_text", {"input_ids", "labels"}),
    ],
)
def test_pair_kto_and_pretraining_previews(tmp_path, capsys, stage, dataset, keys):
    out = tmp_path / "rows.jsonl"
    config = preview_config(tmp_path, stage=stage, dataset=dataset)
    assert main(["preview", config, "--rows", "3", "--jsonl", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 3 and all(set(r) == keys for r in rows)
    for row in rows:
        for prefix in ("", "chosen_", "rejected_", "kl_"):
            if prefix + "input_ids" in row:
                assert len(row[prefix + "input_ids"]) == len(row[prefix + "labels"]) <= 64
    if stage == "pt":
        assert all(r["labels"] == r["input_ids"] for r in rows)
    printed = capsys.readouterr().out
    assert printed.count("── ") == 3


def test_a_bad_template_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["preview", preview_config(tmp_path), "template=lama3"]) == 2
    assert "did you mean 'llama3'" in capsys.readouterr().err

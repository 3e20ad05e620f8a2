"""Token-for-token agreement with ids LLaMA-Factory 0.9.5 itself produced (`../shared/lf-golden`).

Each case is a row of LLaMA-Factory's demo data, its dataset_info entry, the LLaMA-Factory keys and
the ids its pipeline wrote. The row goes through this package's own path: a dataset file and
dataset_info.json, row normalisation, the named template, truncation and labels, in
LLaMA-Factory's row convention (`encoding.llamafactory_rows`, what `preview --jsonl` writes).

Two documented departures are checked in their own terms: pretraining packs by best fit (so the
packed cases compare the token stream LLaMA-Factory cut into blocks), and KTO's mismatched pairs
take the next row's answer where LLaMA-Factory takes the previous one's in its batch (so the
pairs are built with the batch reversed, which makes the two rules coincide).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.encoding import encode_item, llamafactory_rows, pretrain_ids
from ulysses_pro.data.lf_template import tools
from ulysses_pro.data.pipeline import encode_settings, load_rows
from ulysses_pro.data.preference import pair_kto

from ..conftest import REPO

GOLDEN = REPO.parent / "shared" / "lf-golden"
CASES = json.loads((GOLDEN / "cases.json").read_text())["cases"] if (GOLDEN / "cases.json").is_file() else []
STAGES = {"sft": "sft", "rm": "rm", "kto": "kto", "pt": "pt"}
_tokenizers: dict[tuple[str, str], object] = {}

pytestmark = pytest.mark.skipif(not CASES, reason="../shared/lf-golden is not present")


@pytest.fixture(autouse=True)
def frozen_tool_date(monkeypatch):
    # The cases were made with Llama 3's tool-prompt date frozen to this day.
    monkeypatch.setattr(tools, "today", lambda: "26 Jul 2024")


def tokenizer_for(case: dict):
    """One tokenizer per (template, tokenizer): a template fixes its tokenizer in place."""
    from transformers import AutoTokenizer

    key = (case["template"], case["tokenizer"])
    if key not in _tokenizers:
        _tokenizers[key] = AutoTokenizer.from_pretrained(str(GOLDEN / "tokenizers" / case["tokenizer"]))
    return _tokenizers[key]


def data_args_for(case: dict, folder: Path, name: str) -> DataArguments:
    keys = {k: v for k, v in case["lf_args"].items() if k != "stage"}
    return DataArguments(dataset=name, dataset_dir=str(folder), **keys)


def write_rows(folder: Path, name: str, rows: list, entry: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = {"file_name": f"{name}.json", **entry}
    info_path.write_text(json.dumps(info), encoding="utf-8")


def prepared(case: dict, tmp_path: Path, rows: list):
    """(tokenizer, settings, normalised rows) for a case, through dataset_info.json."""
    write_rows(tmp_path, "golden", rows, case["dataset_info"])
    data_args = data_args_for(case, tmp_path, "golden")
    tokenizer = tokenizer_for(case)
    stage = STAGES[case["kind"]]
    settings = encode_settings(data_args, tokenizer, stage)
    return tokenizer, settings, [item for _, item in load_rows(data_args, stage)]


def case_id(case: dict) -> str:
    return case["id"].split("/", 1)[1]


def fixed_state(tokenizer) -> dict:
    return {
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size_after_fix": len(tokenizer),
    }


SEQUENCE_CASES = [c for c in CASES if c["kind"] in ("sft", "rm")]


@pytest.mark.parametrize("case", SEQUENCE_CASES, ids=map(case_id, SEQUENCE_CASES))
def test_supervised_and_pairwise_rows_match_llamafactory(case, tmp_path):
    tokenizer, settings, (item,) = prepared(case, tmp_path, [case["row"]])
    (row,), _ = llamafactory_rows(tokenizer, settings, item)
    expected = {key: case[key] for key in row}
    assert row == expected
    assert fixed_state(tokenizer) == {key: case["lf_state"][key] for key in fixed_state(tokenizer)}


KTO_BATCHES: dict[tuple, list[dict]] = {}
for _case in CASES:
    if _case["kind"] == "kto":
        batch_key = (_case["template"], _case["tokenizer"], _case["lf_args"]["cutoff_len"])
        KTO_BATCHES.setdefault(batch_key, []).append(_case)


@pytest.mark.parametrize("key", list(KTO_BATCHES), ids=lambda key: "-".join(map(str, key)))
def test_kto_rows_match_llamafactory(key, tmp_path):
    batch = sorted(KTO_BATCHES[key], key=lambda c: c["kto_batch"]["index"])
    assert [c["row_name"] for c in batch] == batch[0]["kto_batch"]["rows_in_order"]
    tokenizer, settings, items = prepared(batch[0], tmp_path, [c["row"] for c in batch])
    pieces = [encode_item(tokenizer, settings, item).outputs[0] for item in items]
    # LLaMA-Factory pairs row i with row i-1 of its batch; ours pairs with row i+1: reverse the batch.
    rows = pair_kto(items[::-1], pieces[::-1], settings.cutoff_len)[::-1]
    for case, row in zip(batch, rows):
        assert row == {k: case[k] for k in ("input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tag")}


PRETRAIN_CASES = [c for c in CASES if c["kind"] == "pt"]


@pytest.mark.parametrize("case", PRETRAIN_CASES, ids=map(case_id, PRETRAIN_CASES))
def test_pretraining_tokens_match_llamafactory(case, tmp_path):
    packed = case["lf_state"]["packing"]
    rows = case["row"] if packed else [case["row"]]
    tokenizer, settings, texts = prepared(case, tmp_path, rows)
    if packed:
        # LLaMA-Factory concatenates the texts and cuts blocks (dropping the rest); same stream here.
        stream = [token for text in texts for token in pretrain_ids(tokenizer, text, settings.pretrain_eos)]
        size = case["lf_state"]["cutoff_len_effective"]
        assert [stream[i : i + size] for i in range(0, len(stream) // size * size, size)] == case["input_ids"]
        return
    windows, cut = llamafactory_rows(tokenizer, settings, texts[0])
    # LLaMA-Factory truncates a long text; here it continues in further windows, the first identical.
    assert windows[0]["input_ids"] == case["input_ids"] and windows[0]["labels"] == case["labels"]
    assert cut == (len(windows) > 1)

"""The catalogue of malformed inputs: each stops with one actionable error naming the file, the row
(or line) and the field, and none is skipped silently.

 1. a row that is not a JSON object
 2. a missing answer column (alpaca `output`)
 3. an empty answer
 4. an answer that is not a string
 5. an empty instruction and input
 6. a `history` that is not a list
 7. a `history` entry that is not a [question, answer] pair
 8. a `system` that is not a string
 9. a sharegpt row without its messages column
10. a sharegpt message that is not an object
11. a sharegpt message with an unknown role
12. sharegpt roles out of order (two user turns)
13. a sharegpt chat ending with a user turn
14. a sharegpt message whose content is not a string
15. a `tools` column that is not valid JSON
16. a KTO row without its label
17. a preference row without its rejected answer
18. a preference row whose chosen and rejected answers are the same
19. a KTO row whose label is not true/false
20. a pretraining row with empty text
21. a JSON-lines file with a broken line (file and line)
22. a JSON file whose top level is an object, not a list of rows (file)

With `skip_invalid_rows: true`, every row-level kind (1-20) is skipped, counted and logged, and the
valid rows around it are kept.
"""

from __future__ import annotations

import json

import pytest

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.pipeline import build_datasets

GOOD = {"instruction": "Say hi.", "output": "hi"}
SHAREGPT = {"formatting": "sharegpt"}
GOOD_CHAT = {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}
RANKING = {"ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}
GOOD_PAIR = {"instruction": "Say hi.", "chosen": "hi", "rejected": "go away"}
KTO = {"columns": {"kto_tag": "label"}}
TEXT = {"columns": {"prompt": "text"}}
# history and system are read only when dataset_info maps them (as in LLaMA-Factory).
WITH_HISTORY = {
    "columns": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": "history",
        "system": "system",
    }
}


def chat(*turns):
    return {"conversations": [{"from": role, "value": value} for role, value in turns]}


# (id, stage, dataset_info entry, good row, bad row, error pattern after "<file>:<line>: row 1: ")
ROW_CASES = [
    ("not-an-object", "sft", None, GOOD, "just text", r"expected a JSON object, got str"),
    ("missing-output", "sft", None, GOOD, {"instruction": "q"}, r"missing column 'output' \(output\)"),
    ("empty-output", "sft", None, GOOD, {"instruction": "q", "output": " "}, r"output: empty assistant turn"),
    (
        "output-not-string",
        "sft",
        None,
        GOOD,
        {"instruction": "q", "output": 7},
        r"column 'output' \(output\) must be a string, got int",
    ),
    (
        "empty-prompt",
        "sft",
        None,
        GOOD,
        {"instruction": "", "input": "", "output": "a"},
        r"empty instruction and input",
    ),
    (
        "history-not-list",
        "sft",
        WITH_HISTORY,
        GOOD,
        {**GOOD, "history": "q a"},
        r"column 'history' must be a list",
    ),
    (
        "history-bad-pair",
        "sft",
        WITH_HISTORY,
        GOOD,
        {**GOOD, "history": [["q"]]},
        r"history\[0\] must be a \[question, answer\] pair",
    ),
    (
        "system-not-string",
        "sft",
        WITH_HISTORY,
        GOOD,
        {**GOOD, "system": ["be nice"]},
        r"column 'system' \(system\) must be a string, got list",
    ),
    (
        "no-messages",
        "sft",
        SHAREGPT,
        GOOD_CHAT,
        {"messages": []},
        r"column 'conversations' must be a non-empty list",
    ),
    (
        "message-not-object",
        "sft",
        SHAREGPT,
        GOOD_CHAT,
        {"conversations": [{"from": "human", "value": "q"}, "a"]},
        r"conversations\[1\] must be an object, got str",
    ),
    (
        "unknown-role",
        "sft",
        SHAREGPT,
        GOOD_CHAT,
        chat(("human", "q"), ("bot", "a")),
        r"conversations\[1\]: unknown role 'bot' under 'from'",
    ),
    (
        "role-order",
        "sft",
        SHAREGPT,
        GOOD_CHAT,
        chat(("human", "q"), ("human", "q"), ("gpt", "a")),
        r"conversations\[1\]: wrong role order: expected 'gpt' or 'function_call' here, got 'human'",
    ),
    (
        "ends-with-user",
        "sft",
        SHAREGPT,
        GOOD_CHAT,
        chat(("human", "q"), ("gpt", "a"), ("human", "q")),
        r"conversations: the last message must be an assistant turn",
    ),
    (
        "content-not-string",
        "sft",
        SHAREGPT,
        GOOD_CHAT,
        {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "a"}]},
        r"conversations\[0\]: 'value' must be a string, got NoneType",
    ),
    (
        "tools-not-json",
        "sft",
        {"formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}},
        GOOD_CHAT,
        {**GOOD_CHAT, "tools": "[{name: f}]"},
        r"column tools: not valid JSON",
    ),
    ("kto-label-missing", "kto", KTO, {**GOOD, "label": True}, GOOD, r"missing column 'label' \(kto_tag\)"),
    (
        "missing-rejected",
        "dpo",
        RANKING,
        GOOD_PAIR,
        {"instruction": "q", "chosen": "a"},
        r"missing column 'rejected' \(rejected answer\)",
    ),
    (
        "identical-answers",
        "dpo",
        RANKING,
        GOOD_PAIR,
        {"instruction": "q", "chosen": "a", "rejected": "a "},
        r"chosen and rejected answers are identical",
    ),
    (
        "kto-label-not-bool",
        "kto",
        KTO,
        {**GOOD, "label": True},
        {**GOOD, "label": "yes"},
        r"column 'label' \(kto_tag\) must be true or false, got 'yes'",
    ),
    ("empty-text", "pt", TEXT, {"text": "some words"}, {"text": "  "}, r"column 'text' is empty"),
]


@pytest.mark.parametrize(
    ("stage", "entry", "good", "bad", "pattern"), [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES]
)
def test_each_malformed_row_stops_with_file_row_and_field(
    write_dataset, tokenizer, stage, entry, good, bad, pattern
):
    folder = write_dataset("bad", [good, bad, good], entry)
    args = DataArguments(dataset="bad", dataset_dir=str(folder), cutoff_len=16)
    with pytest.raises(DataError, match=r"bad\.json:\d+: row 1: " + pattern) as caught:
        build_datasets(args, tokenizer, stage)
    assert str(caught.value).count("\n") == 0  # one error, one line


@pytest.mark.parametrize(
    ("stage", "entry", "good", "bad", "pattern"), [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES]
)
def test_skip_invalid_rows_skips_each_kind_and_counts_it(
    write_dataset, tokenizer, caplog, stage, entry, good, bad, pattern
):
    folder = write_dataset("bad", [good, bad, good], entry)
    args = DataArguments(dataset="bad", dataset_dir=str(folder), cutoff_len=16, skip_invalid_rows=True)
    with caplog.at_level("WARNING"):
        train = build_datasets(args, tokenizer, stage).train
    assert len(train) == (1 if stage == "pt" else 2)  # pt packs both documents into one row
    assert "skipped 1 invalid row(s)" in caplog.text and "bad.json:1: row 1" in caplog.text


def test_broken_json_line_names_file_and_line(write_dataset, tokenizer):
    raw = '{"instruction": "q", "output": "a"}\n{"instruction": "q", "output": oops}\n'
    folder = write_dataset("bad", None, suffix=".jsonl", raw=raw)
    with pytest.raises(DataError, match=r"bad\.jsonl:2:\d+: invalid JSON: Expecting value"):
        build_datasets(
            DataArguments(dataset="bad", dataset_dir=str(folder), skip_invalid_rows=True), tokenizer, "sft"
        )


def test_top_level_object_names_the_file(write_dataset, tokenizer):
    folder = write_dataset("bad", None, raw='{"instruction": "q", "output": "a"}')
    with pytest.raises(DataError, match=r"bad\.json: expected a JSON list of rows at the top level"):
        build_datasets(DataArguments(dataset="bad", dataset_dir=str(folder)), tokenizer, "sft")


def test_errors_name_the_line_a_row_starts_on(write_dataset, tokenizer):
    """Pretty-printed JSON (as LLaMA-Factory ships it): the error points at the row's first line."""
    rows = [GOOD, GOOD, {"instruction": "q", "output": 3}]
    folder = write_dataset("bad", None, raw=json.dumps(rows, indent=2))
    start = json.dumps(rows, indent=2).splitlines().index("  {", 9) + 1
    assert start == 10
    with pytest.raises(DataError, match=rf"bad\.json:{start}: row 2: column 'output'"):
        build_datasets(DataArguments(dataset="bad", dataset_dir=str(folder)), tokenizer, "sft")
    with pytest.raises(DataError, match=r"bad\.json:3:\d+: invalid JSON: Expecting ',' delimiter"):
        folder = write_dataset("bad", None, raw='[\n  {"instruction": "q", "output": "a"}\n  {"x": 1}\n]')
        build_datasets(DataArguments(dataset="bad", dataset_dir=str(folder)), tokenizer, "sft")
    folder = write_dataset("bad", None, raw='[{"instruction": "q", "output": "a"}] trailing')
    with pytest.raises(DataError, match=r"bad\.json:1:\d+: invalid JSON: Extra data"):
        build_datasets(DataArguments(dataset="bad", dataset_dir=str(folder)), tokenizer, "sft")

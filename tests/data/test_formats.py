"""Row formats and their errors: every malformed row names the file, the row and what was expected."""

from __future__ import annotations

import pytest

from ulysses_pro.data.errors import DataError
from ulysses_pro.data.files import read_rows
from ulysses_pro.data.formats import to_conversation, to_text
from ulysses_pro.data.registry import load_dataset_specs

from ..conftest import LF_DATA

MESSAGES_ENTRY = {
    "formatting": "sharegpt",
    "columns": {"messages": "messages"},
    "tags": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    },
}


def convert(dataset_dir, name):
    (spec,) = load_dataset_specs(name, dataset_dir)
    return [to_conversation(row, spec, ref) for ref, row in read_rows(spec.path)]


def test_alpaca_with_input_system_and_history(write_dataset):
    rows = [
        {
            "instruction": "Add",
            "input": "2 and 3",
            "output": "5",
            "system": "Be brief.",
            "history": [["hi", "hello"]],
        }
    ]
    folder = write_dataset(
        "a",
        rows,
        {
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "response": "output",
                "system": "system",
                "history": "history",
            }
        },
    )
    (conversation,) = convert(folder, "a")
    assert conversation.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Add\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]


def test_sharegpt_from_value_and_openai_messages(write_dataset):
    write_dataset(
        "s",
        [
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ]
            }
        ],
        {"formatting": "sharegpt"},
    )
    folder = write_dataset(
        "m",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
        MESSAGES_ENTRY,
        suffix=".jsonl",
    )
    (sharegpt,) = convert(folder, "s")
    (openai,) = convert(folder, "m")
    assert sharegpt.messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert openai.messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


@pytest.mark.parametrize(
    ("rows", "entry", "pattern"),
    [
        ([{"instruction": "q"}], None, r"a.json:\d+: row 0: missing column 'output'"),
        (
            [{"instruction": "q", "output": "a"}, {"instruction": "q", "output": "  "}],
            None,
            r"a.json:\d+: row 1: output: empty assistant turn",
        ),
        (
            [{"instruction": "q", "output": 3}],
            None,
            r"a.json:\d+: row 0: column 'output' \(output\) must be a string",
        ),
        (["just a string"], None, r"a.json:\d+: row 0: expected a JSON object"),
        (
            [{"conversations": [{"from": "gpt", "value": "a"}]}],
            {"formatting": "sharegpt"},
            r"a.json:\d+: row 0: conversations\[0\]: wrong role order",
        ),
        (
            [{"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]}],
            {"formatting": "sharegpt"},
            r"row 0: conversations\[1\]: wrong role order: expected 'gpt'",
        ),
        (
            [{"conversations": [{"from": "human", "value": "q"}]}],
            {"formatting": "sharegpt"},
            r"row 0: conversations: the last message must be an assistant turn",
        ),
        (
            [{"conversations": [{"from": "alien", "value": "q"}]}],
            {"formatting": "sharegpt"},
            r"row 0: conversations\[0\]: unknown role 'alien'",
        ),
        (
            [{"conversations": []}],
            {"formatting": "sharegpt"},
            r"row 0: column 'conversations' must be a non-empty list",
        ),
        (
            [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}],
            {"formatting": "sharegpt"},
            r"row 0: conversations\[1\]: empty assistant turn",
        ),
    ],
)
def test_malformed_rows(write_dataset, rows, entry, pattern):
    folder = write_dataset("a", rows, entry)
    with pytest.raises(DataError, match=pattern):
        convert(folder, "a")


def test_bad_json_names_file_and_line(write_dataset):
    folder = write_dataset(
        "a", None, suffix=".jsonl", raw='{"instruction": "q", "output": "a"}\n{"instruction": oops}\n'
    )
    with pytest.raises(DataError, match=r"a.jsonl:2:\d+: invalid JSON"):
        convert(folder, "a")


def test_registry_errors(write_dataset, tmp_path):
    folder = write_dataset("alpaca_demo", [{"instruction": "q", "output": "a"}])
    with pytest.raises(DataError, match=r"dataset 'alpaca_dem' is not defined; did you mean 'alpaca_demo'"):
        load_dataset_specs("alpaca_dem", folder)
    with pytest.raises(DataError, match=r"dataset_info.json: not found"):
        load_dataset_specs("x", tmp_path / "nowhere")


def test_pretraining_text_jsonl_and_txt(write_dataset, tmp_path):
    write_dataset(
        "t", [{"text": "hello world"}, {"text": "more"}], {"columns": {"prompt": "text"}}, suffix=".jsonl"
    )
    folder = write_dataset(
        "w", None, {"columns": {"prompt": "text"}}, suffix=".txt", raw="line one\n\nline two\n"
    )
    for name, expected in (("t", ["hello world", "more"]), ("w", ["line one", "line two"])):
        (spec,) = load_dataset_specs(name, folder)
        assert [to_text(row, spec, ref) for ref, row in read_rows(spec.path)] == expected


@pytest.mark.skipif(not LF_DATA.is_dir(), reason="LLaMA-Factory demo data not present")
@pytest.mark.parametrize(
    "name",
    ["alpaca_en_demo", "alpaca_zh_demo", "identity", "glaive_toolcall_en_demo", "c4_demo", "wiki_demo"],
)
def test_llama_factory_demo_datasets_load(name):
    (spec,) = load_dataset_specs(name, LF_DATA)
    rows = list(read_rows(spec.path))
    assert len(rows) > 10
    if name in ("c4_demo", "wiki_demo"):
        texts = [to_text(row, spec, ref) for ref, row in rows]
        assert all(texts)
    else:
        conversations = [to_conversation(row, spec, ref) for ref, row in rows]
        assert all(c.messages[-1]["role"] == "assistant" for c in conversations)
        if name == "glaive_toolcall_en_demo":
            assert any(m["role"] == "tool" for c in conversations for m in c.messages)

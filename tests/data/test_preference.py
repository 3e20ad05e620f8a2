"""Preference (ranking) and KTO rows: parsing, token ids, batching, and the errors on bad rows."""

from __future__ import annotations

import json

import pytest
import torch

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.collators import KtoCollator, PairwiseCollator
from ulysses_pro.data.encoding import to_document
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.files import read_rows
from ulysses_pro.data.pipeline import build_datasets
from ulysses_pro.data.preference import (
    kto_pieces,
    pair_kto,
    pair_pieces,
    pair_row,
    to_kto_example,
    to_preference_pair,
)
from ulysses_pro.data.registry import load_dataset_specs
from ulysses_pro.data.templates import IGNORE_INDEX, chat_format
from ulysses_pro.parallel.sharding import pad_for_sequence_parallel

from ..conftest import LF_DATA
from .test_formats import MESSAGES_ENTRY


def encode_pair(tokenizer, template, pair, cutoff_len):
    return to_document(pair_row(*pair_pieces(tokenizer, template, pair), cutoff_len))


def encode_kto(tokenizer, template, examples, cutoff_len):
    pieces = [kto_pieces(tokenizer, template, example) for example in examples]
    return [to_document(row) for row in pair_kto(examples, pieces, cutoff_len)]


ALPACA_RANKING = {
    "ranking": True,
    "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
}
SHAREGPT_RANKING = {
    "ranking": True,
    "formatting": "sharegpt",
    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
}
KTO_ENTRY = {**MESSAGES_ENTRY, "columns": {"messages": "messages", "kto_tag": "label"}}


def load(dataset_dir, name, convert):
    (spec,) = load_dataset_specs(name, dataset_dir)
    return [convert(row, spec, ref) for ref, row in read_rows(spec.path)]


def test_alpaca_and_sharegpt_pairs(write_dataset):
    write_dataset("a", [{"instruction": "Add 2 and 3", "chosen": "5", "rejected": "6"}], ALPACA_RANKING)
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "2+2?"},
            ],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
        }
    ]
    folder = write_dataset("s", rows, SHAREGPT_RANKING)
    (alpaca,) = load(folder, "a", to_preference_pair)
    assert alpaca.prompt == [{"role": "user", "content": "Add 2 and 3"}]
    assert (alpaca.chosen, alpaca.rejected) == ("5", "6")
    (chat,) = load(folder, "s", to_preference_pair)
    assert [m["role"] for m in chat.prompt] == ["user", "assistant", "user"]
    assert (chat.chosen, chat.rejected) == ("4", "5")


# Each malformed preference / KTO row, and the words its error must contain.
BAD_ROWS = [
    ("alpaca", {"instruction": "q", "rejected": "b"}, "missing column 'chosen'"),
    ("alpaca", {"instruction": "q", "chosen": " ", "rejected": "b"}, "chosen answer: empty assistant turn"),
    (
        "alpaca",
        {"instruction": "q", "chosen": "same", "rejected": "same "},
        "chosen and rejected answers are identical",
    ),
    (
        "alpaca",
        {"instruction": "q", "chosen": "a", "rejected": 3},
        "'rejected' (rejected answer) must be a string",
    ),
    ("alpaca", {"instruction": "", "chosen": "a", "rejected": "b"}, "empty instruction and input"),
    (
        "sharegpt",
        {
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            "chosen": "x",
            "rejected": "y",
        },
        "a preference prompt must end with a user turn",
    ),
    (
        "sharegpt",
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "human", "value": "x"},
            "rejected": "y",
        },
        "role 'human' is not an assistant turn",
    ),
]


@pytest.mark.parametrize(("formatting", "row", "message"), BAD_ROWS)
def test_bad_preference_rows_name_file_and_row(write_dataset, formatting, row, message):
    entry = ALPACA_RANKING if formatting == "alpaca" else SHAREGPT_RANKING
    good = {"instruction": "q", "chosen": "a", "rejected": "b"}
    if formatting == "sharegpt":
        good = {"conversations": [{"from": "human", "value": "q"}], "chosen": "a", "rejected": "b"}
    folder = write_dataset("bad", [good, row], entry)
    with pytest.raises(DataError, match=r"bad\.json:\d+: row 1: .*" + _escape(message)):
        load(folder, "bad", to_preference_pair)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_kto_rows_and_their_errors(write_dataset, tmp_path):
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    folder = write_dataset(
        "k", [{"messages": chat, "label": True}, {"messages": chat, "label": False}], KTO_ENTRY
    )
    examples = load(folder, "k", to_kto_example)
    assert [e.desirable for e in examples] == [True, False]
    for row, message in [
        ({"messages": chat}, "row 1: missing column 'label' (kto_tag)"),
        (
            {"messages": chat, "label": "yes"},
            "row 1: column 'label' (kto_tag) must be true or false, got 'yes'",
        ),
    ]:
        write_dataset("k", [{"messages": chat, "label": True}, row], KTO_ENTRY)
        with pytest.raises(DataError, match=_escape(message)):
            load(folder, "k", to_kto_example)
    write_dataset("nolabel", [{"messages": chat}], MESSAGES_ENTRY)
    with pytest.raises(DataError, match="maps no kto_tag column"):
        load(folder, "nolabel", to_kto_example)


def test_pair_tokens_share_the_prompt_and_train_only_answers(write_dataset, tokenizer):
    template = chat_format(tokenizer, DataArguments())
    folder = write_dataset(
        "a", [{"instruction": "Add 2 and 3", "chosen": "five", "rejected": "six or seven"}], ALPACA_RANKING
    )
    (pair,) = load(folder, "a", to_preference_pair)
    row = encode_pair(tokenizer, template, pair, 512)
    for side, answer in (("chosen", "five"), ("rejected", "six or seven")):
        ids, labels = row[f"{side}_input_ids"], row[f"{side}_shift_labels"]
        trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
        assert trained == answer + "<|im_end|>\n"
        assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n" + answer + "<|im_end|>\n")
    prompt_length = row["chosen_shift_labels"].index(
        next(t for t in row["chosen_shift_labels"] if t != IGNORE_INDEX)
    )
    assert row["chosen_input_ids"][: prompt_length + 1] == row["rejected_input_ids"][: prompt_length + 1]


def test_long_pairs_fit_cutoff_and_keep_the_prompt_start(write_dataset, tokenizer):
    template = chat_format(tokenizer, DataArguments())
    long_prompt = "first words " + " ".join(["word"] * 200) + " final question"
    folder = write_dataset(
        "a", [{"instruction": long_prompt, "chosen": "yes " * 50, "rejected": "no"}], ALPACA_RANKING
    )
    (pair,) = load(folder, "a", to_preference_pair)
    row = encode_pair(tokenizer, template, pair, 64)
    assert len(row["chosen_input_ids"]) <= 64 and len(row["rejected_input_ids"]) <= 64
    # LLaMA-Factory's rule: the prompt keeps its beginning, both answers are cut to one length.
    text = tokenizer.decode(row["rejected_input_ids"])
    assert "first words" in text and "final question" not in text and text.endswith("no<|im_end|>\n")
    assert any(t != IGNORE_INDEX for t in row["chosen_shift_labels"])


def test_kto_mismatched_pairs_take_the_next_answer(tokenizer):
    from ulysses_pro.data.errors import RowRef
    from ulysses_pro.data.formats import Conversation
    from ulysses_pro.data.preference import KtoExample

    def example(q, a, label):
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return KtoExample(Conversation(messages, RowRef("m", 0)), label)

    template = chat_format(tokenizer, DataArguments())
    rows = encode_kto(tokenizer, template, [example("q1", "a1", True), example("q2", "a2", False)], 128)
    decoded = [tokenizer.decode(r["kl_input_ids"]) for r in rows]
    assert "q1" in decoded[0] and decoded[0].endswith("a2<|im_end|>\n")
    assert "q2" in decoded[1] and decoded[1].endswith("a1<|im_end|>\n")
    assert [r["kto_label"] for r in rows] == [True, False]


def test_pairwise_and_kto_collators():
    rows = [
        {
            "chosen_input_ids": [1, 2, 3],
            "chosen_shift_labels": [-100, 3, -100],
            "rejected_input_ids": [1, 2, 4, 5],
            "rejected_shift_labels": [-100, 4, 5, -100],
        },
        {
            "chosen_input_ids": [6, 7],
            "chosen_shift_labels": [7, -100],
            "rejected_input_ids": [6, 8],
            "rejected_shift_labels": [8, -100],
        },
    ]
    batch = PairwiseCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 0, 0], [1, 2, 4, 5], [6, 8, 0, 0]]
    assert batch["last_token_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
    padded = pad_for_sequence_parallel(batch, 6, pad_token_id=0)
    assert padded["last_token_mask"].shape == (4, 6) and padded["last_token_mask"].sum() == 4
    kto = KtoCollator(pad_token_id=0)(
        [
            {
                "input_ids": [1, 2],
                "shift_labels": [2, -100],
                "kl_input_ids": [1, 3, 4],
                "kl_shift_labels": [3, 4, -100],
                "kto_label": True,
            },
            {
                "input_ids": [5, 6],
                "shift_labels": [6, -100],
                "kl_input_ids": [5, 2],
                "kl_shift_labels": [2, -100],
                "kto_label": False,
            },
        ]
    )
    assert kto["input_ids"].shape == (4, 3)
    assert kto["kto_labels"].tolist() == [True, False]
    assert torch.equal(pad_for_sequence_parallel(kto, 4, 0)["kto_labels"], kto["kto_labels"])


def test_stage_and_dataset_layout_must_agree(write_dataset, tokenizer):
    from ulysses_pro.config.args import DataArguments

    folder = write_dataset("sft", [{"instruction": "q", "output": "a"}])
    write_dataset("pairs", [{"instruction": "q", "chosen": "a", "rejected": "b"}], ALPACA_RANKING)
    with pytest.raises(DataError, match="'sft' has no ranking: true; stage dpo needs preference rows"):
        build_datasets(DataArguments(dataset="sft", dataset_dir=str(folder)), tokenizer, "dpo")
    with pytest.raises(DataError, match="'pairs' is a preference dataset .*stage sft needs SFT rows"):
        build_datasets(DataArguments(dataset="pairs", dataset_dir=str(folder)), tokenizer, "sft")
    with pytest.raises(DataError, match="stage kto needs KTO rows"):
        build_datasets(DataArguments(dataset="pairs", dataset_dir=str(folder)), tokenizer, "kto")


@pytest.mark.skipif(not LF_DATA.is_dir(), reason="LLaMA-Factory demo data not present")
@pytest.mark.parametrize(
    ("name", "stage"), [("dpo_en_demo", "dpo"), ("dpo_en_demo", "rm"), ("kto_en_demo", "kto")]
)
def test_llamafactory_preference_demo_data(tokenizer, name, stage):
    from ulysses_pro.config.args import DataArguments
    from ulysses_pro.data.registry import load_dataset_specs as specs

    (spec,) = specs(name, LF_DATA)
    total = len(json.loads(spec.path.read_text(encoding="utf-8")))
    bundle = build_datasets(
        DataArguments(dataset=name, dataset_dir=str(LF_DATA), cutoff_len=256), tokenizer, stage
    )
    assert len(bundle.train) == total  # every row converts; nothing is skipped
    row = bundle.train[0]
    if stage == "kto":
        assert isinstance(row["kto_label"], bool) and len(row["kl_input_ids"]) <= 256
    else:
        assert len(row["chosen_input_ids"]) <= 256 and len(row["rejected_input_ids"]) <= 256


def test_pipeline_reports_the_share_of_pairs_cut(write_dataset, tokenizer, caplog):
    from ulysses_pro.config.args import DataArguments

    rows = [
        {"instruction": "short", "chosen": "yes", "rejected": "no"},
        {"instruction": "word " * 200, "chosen": "yes", "rejected": "no"},
    ]
    folder = write_dataset("a", rows, ALPACA_RANKING)
    with caplog.at_level("INFO"):
        build_datasets(DataArguments(dataset="a", dataset_dir=str(folder), cutoff_len=64), tokenizer, "dpo")
    assert "train: 2 preference pairs, 1 (50.0%) cut to cutoff_len=64" in caplog.text

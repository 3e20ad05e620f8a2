"""Chat-template label masks and truncation."""

from __future__ import annotations

import json

import pytest

from ulysses_pro.data.errors import DataError, RowRef
from ulysses_pro.data.formats import Conversation
from ulysses_pro.data.templates import IGNORE_INDEX, encode_conversation, resolve_chat_template

REF = RowRef("mem.json", 0)


def chat(*turns, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Conversation(messages, REF)


def trained_text(tokenizer, input_ids, labels):
    return tokenizer.decode([t for t, lab in zip(input_ids, labels) if lab != IGNORE_INDEX])


@pytest.fixture
def template(tokenizer):
    return resolve_chat_template(tokenizer, None)


def test_full_text_equals_template_rendering(tokenizer, template):
    conversation = chat(("Count from 1 to 3.", "1 2 3"), ("And back?", "3 2 1"), system="Be brief.")
    input_ids, _ = encode_conversation(tokenizer, template, conversation, 512)
    rendered = tokenizer.apply_chat_template(conversation.messages, chat_template=template, tokenize=False)
    assert tokenizer.decode(input_ids) == rendered


def test_only_assistant_turns_are_trained(tokenizer, template):
    conversation = chat(("Count from 1 to 3.", "1 2 3"), ("And back?", "3 2 1"))
    input_ids, labels = encode_conversation(tokenizer, template, conversation, 512)
    assert trained_text(tokenizer, input_ids, labels) == "1 2 3<|im_end|>\n3 2 1<|im_end|>\n"


def test_mask_history_trains_only_the_last_turn(tokenizer, template):
    conversation = chat(("Count from 1 to 3.", "1 2 3"), ("And back?", "3 2 1"))
    input_ids, labels = encode_conversation(tokenizer, template, conversation, 512, mask_history=True)
    assert trained_text(tokenizer, input_ids, labels) == "3 2 1<|im_end|>\n"


def test_train_on_prompt_trains_everything(tokenizer, template):
    conversation = chat(("Hi", "Hello"))
    input_ids, labels = encode_conversation(tokenizer, template, conversation, 512, train_on_prompt=True)
    assert labels == input_ids


@pytest.mark.parametrize("cutoff", [4, 5, 8, 13, 21, 40])
@pytest.mark.parametrize("mask_history", [False, True])
def test_truncation_always_keeps_a_trained_target(tokenizer, template, cutoff, mask_history):
    long_prompt = "word " * 60
    conversation = chat((long_prompt, "the answer is here"), (long_prompt, "a second long answer " * 5))
    input_ids, labels = encode_conversation(
        tokenizer, template, conversation, cutoff, mask_history=mask_history
    )
    assert len(input_ids) == len(labels) <= cutoff
    # After the shift, position 0 is never a target: a trained token must sit at index >= 1.
    assert any(label != IGNORE_INDEX for label in labels[1:])
    if mask_history:
        last_answer = tokenizer.encode("a second", add_special_tokens=False)
        assert labels[labels.index(next(lab for lab in labels if lab != IGNORE_INDEX))] == last_answer[0]


def test_builtin_chatml_for_tokenizers_without_a_template(tokenizer):
    class NoTemplate:
        chat_template = None

    assert "<|im_start|>" in resolve_chat_template(NoTemplate(), "qwen")
    with pytest.raises(ValueError, match="template: 'llama3' is not built in"):
        resolve_chat_template(NoTemplate(), "llama3")


def test_a_misspelt_template_name_stops_with_the_closest_names(tokenizer):
    """Even when the tokenizer ships its own chat template (which a valid name would select)."""
    assert tokenizer.chat_template
    with pytest.raises(
        DataError, match=r"template: 'qwen_3' is not a LLaMA-Factory template name; did you mean 'qwen3'"
    ):
        resolve_chat_template(tokenizer, "qwen_3")
    resolve_chat_template(tokenizer, "qwen3_nothink")  # every name LLaMA-Factory registers passes


TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {% for tool in tools %}{{ tool['name'] }};{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_CALL = '{"name": "weather", "arguments": {"city": "Oslo"}}'


def tool_chat_dataset(write_dataset):
    """A glaive-style sharegpt row: tools column, function_call turn, observation turn, answer."""
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": TOOL_CALL},
            {"from": "observation", "value": '{"temp": "4C"}'},
            {"from": "gpt", "value": "It is 4C in Oslo."},
        ],
        "tools": '[{"name": "weather", "description": "Current weather", "parameters": {}}]',
    }
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}}
    return write_dataset("tools", [row], entry)


def test_tool_calls_and_observations(write_dataset, tokenizer, caplog):
    from ulysses_pro.config.args import DataArguments
    from ulysses_pro.data.pipeline import build_datasets
    from ulysses_pro.data.templates import renders_tools

    folder = tool_chat_dataset(write_dataset)
    own = tokenizer.chat_template
    try:
        tokenizer.chat_template = TOOLS_TEMPLATE
        assert renders_tools(tokenizer, TOOLS_TEMPLATE)
        (row,) = build_datasets(
            DataArguments(dataset="tools", dataset_dir=str(folder)), tokenizer, "sft"
        ).train.rows
    finally:
        tokenizer.chat_template = own
    text = tokenizer.decode(row["input_ids"])
    assert text.startswith("<|im_start|>system\nTools: weather;")
    assert "<|im_start|>tool\n" in text  # the observation is a tool turn
    trained = tokenizer.decode([t for t in row["shift_labels"] if t != IGNORE_INDEX])
    # The call and the final answer train; the tool list, the question and the observation do not.
    assert TOOL_CALL in trained and "It is 4C in Oslo." in trained
    assert "Tools" not in trained and "Weather in Oslo?" not in trained and "temp" not in trained
    # A template that ignores tools is used, but the user is told the model will not see them.
    with caplog.at_level("WARNING"):
        build_datasets(
            DataArguments(dataset="tools", dataset_dir=str(folder), template="chatml"), tokenizer, "sft"
        )
    assert "1 rows carry a tools column but the chat template does not render tools" in caplog.text


def test_llamafactory_tool_calling_demo_renders_its_tools(tokenizer):
    from ulysses_pro.config.args import DataArguments
    from ulysses_pro.data.pipeline import build_datasets

    from ..conftest import LF_DATA

    if not LF_DATA.is_dir():
        pytest.skip("LLaMA-Factory demo data not present")
    own = tokenizer.chat_template
    try:
        tokenizer.chat_template = TOOLS_TEMPLATE
        args = DataArguments(
            dataset="glaive_toolcall_en_demo", dataset_dir=str(LF_DATA), max_samples=20, cutoff_len=4096
        )
        bundle = build_datasets(args, tokenizer, "sft")
    finally:
        tokenizer.chat_template = own
    texts = [tokenizer.decode(row["input_ids"]) for row in bundle.train.rows]
    raw = json.loads((LF_DATA / "glaive_toolcall_en_demo.json").read_text())[:20]
    with_tools = [bool(json.loads(row["tools"] or "[]")) for row in raw]
    assert sum(with_tools) >= 5
    assert [text.startswith("<|im_start|>system\nTools: ") for text in texts] == with_tools
    observations = [any(m["from"] == "observation" for m in row["conversations"]) for row in raw]
    assert any(observations)
    assert ["<|im_start|>tool\n" in text for text in texts] == observations  # observations are tool turns

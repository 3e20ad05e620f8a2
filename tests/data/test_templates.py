"""Chat-template label masks and truncation."""

from __future__ import annotations

import json

import pytest

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.encoding import encode_conversation
from ulysses_pro.data.errors import DataError, RowRef
from ulysses_pro.data.formats import Conversation
from ulysses_pro.data.templates import IGNORE_INDEX, chat_format

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
    return chat_format(tokenizer, DataArguments())


def test_full_text_equals_template_rendering(tokenizer, template):
    conversation = chat(("Count from 1 to 3.", "1 2 3"), ("And back?", "3 2 1"), system="Be brief.")
    input_ids, _ = encode_conversation(tokenizer, template, conversation, 512)
    rendered = tokenizer.apply_chat_template(
        conversation.messages, chat_template=template.template, tokenize=False
    )
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
def test_truncation_keeps_a_trained_target_or_names_the_row(tokenizer, template, cutoff, mask_history):
    long_prompt = "word " * 60
    conversation = chat((long_prompt, "the answer is here"), (long_prompt, "a second long answer " * 5))
    try:
        input_ids, labels = encode_conversation(
            tokenizer, template, conversation, cutoff, mask_history=mask_history
        )
    except DataError as err:
        # LLaMA-Factory's split gives a short answer no token of a tiny budget; it would train on nothing.
        assert str(err) == f"mem.json row 0: no answer token survives cutoff_len={cutoff}; raise cutoff_len"
        assert not mask_history and cutoff <= 8
        return
    assert len(input_ids) == len(labels) <= cutoff
    # After the shift, position 0 is never a target: a trained token must sit at index >= 1.
    assert any(label != IGNORE_INDEX for label in labels[1:])
    if mask_history:
        last_answer = tokenizer.encode("a second", add_special_tokens=False)
        assert labels[labels.index(next(lab for lab in labels if lab != IGNORE_INDEX))] == last_answer[0]


@pytest.mark.parametrize(
    ("prompt", "answer", "budget", "kept"),
    [
        (100, 10, 64, (54, 10)),  # a short answer is kept whole, the prompt cut
        (10, 100, 64, (10, 54)),  # else a short prompt is kept whole, the answer cut
        (100, 60, 64, (40, 24)),  # else the answer gets int(64 * 60 / 160) = 24
        (6, 70, 64, (6, 58)),  # LLaMA-Factory's qwen alpaca_0 at cutoff 64
        (3, 3, 64, (3, 3)),
    ],
)
def test_llamafactory_budget_split(prompt, answer, budget, kept):
    from ulysses_pro.data.truncation import infer_seqlen

    assert infer_seqlen(prompt, answer, budget) == kept


def test_builtin_chatml_for_tokenizers_without_a_template(tokenizer):
    class NoTemplate:
        chat_template = None

    assert "<|im_start|>" in chat_format(NoTemplate(), DataArguments()).template


def test_a_misspelt_template_name_stops_with_the_closest_names(tokenizer):
    """Even when the tokenizer ships its own chat template."""
    assert tokenizer.chat_template
    with pytest.raises(
        DataError, match=r"template: 'qwen_3' is not a LLaMA-Factory template name; did you mean 'qwen3'"
    ):
        chat_format(tokenizer, DataArguments(template="qwen_3"))


def test_a_llamafactory_template_not_implemented_is_refused_by_name(tokenizer):
    with pytest.raises(
        DataError, match=r"'falcon' is a LLaMA-Factory template Ulysses Pro does not implement"
    ):
        chat_format(tokenizer, DataArguments(template="falcon"))


def test_a_template_whose_tokens_the_tokenizer_lacks_stops(tokenizer):
    # llama3's turn end replaces the eos; the built-in ChatML tokenizer has no such token.
    with pytest.raises(DataError, match=r"template 'llama3' needs the tokens \['<\|eot_id\|>'"):
        chat_format(tokenizer, DataArguments(template="llama3"))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("default", "Human: Hi<|im_end|>\nAssistant:Hello<|im_end|>\n"),
        ("empty", "HiHello"),
        ("chatml", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"),
        ("mistral", "[INST] Hi[/INST] Hello<|im_end|>"),
    ],
)
def test_named_templates_write_llamafactory_formats(tokenizer, name, text):
    template = chat_format(tokenizer, DataArguments(template=name))
    input_ids, labels = encode_conversation(tokenizer, template, chat(("Hi", "Hello")), 512)
    assert tokenizer.decode(input_ids) == text
    answer = (
        "Hello<|im_end|>\n"
        if name in ("default", "chatml")
        else text[text.index("Hello") - (name == "mistral") :]
    )
    assert trained_text(tokenizer, input_ids, labels) == answer


def test_reasoning_template_trains_an_empty_thought_unless_thinking_is_off(write_dataset, tokenizer):
    from ulysses_pro.data.chat_format import EncodedTurn  # noqa: F401  (the turns' type)

    think = tokenizer.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
    on = chat_format(tokenizer, DataArguments(template="qwen3"))
    off = chat_format(tokenizer, DataArguments(template="qwen3", enable_thinking=False))
    nothink = chat_format(tokenizer, DataArguments(template="qwen3_nothink"))
    conversation = chat(("Hi", "Hello"))
    (turn_on,) = on.turns(tokenizer, conversation)
    (turn_off,) = off.turns(tokenizer, conversation)
    (turn_plain,) = nothink.turns(tokenizer, conversation)
    assert turn_on.answer == think + turn_plain.answer and turn_on.prompt == turn_plain.prompt
    assert turn_off.prompt == turn_plain.prompt + think and turn_off.answer == turn_plain.answer


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

    folder = tool_chat_dataset(write_dataset)
    own = tokenizer.chat_template
    try:
        tokenizer.chat_template = TOOLS_TEMPLATE
        assert chat_format(tokenizer, DataArguments()).renders_tools(tokenizer)
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
    # A chat template that ignores tools is used, but the user is told the model will not see them.
    with caplog.at_level("WARNING"):
        build_datasets(DataArguments(dataset="tools", dataset_dir=str(folder)), tokenizer, "sft")
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

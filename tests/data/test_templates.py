"""Chat-template label masks and truncation."""

from __future__ import annotations

import pytest

from ulysses_pro.data.errors import RowRef
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

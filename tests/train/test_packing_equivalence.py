"""The loss of a neat-packed batch equals the token-weighted loss of its documents run separately."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.data.encoding import encode_conversation
from ulysses_pro.data.errors import RowRef
from ulysses_pro.data.formats import Conversation
from ulysses_pro.data.packing import pack_documents, shifted
from ulysses_pro.data.templates import chat_format
from ulysses_pro.models.memory import token_loss_head
from ulysses_pro.models.tiny import build_tiny_model

QUESTIONS = [
    ("Count from 3 to 9.", "3 4 5 6 7 8 9"),
    ("What day comes after Monday?", "Tuesday"),
    ("Give the opposite of hot.", "cold"),
    ("Repeat the word apple three times.", "apple apple apple"),
]


def documents(tokenizer):
    template = chat_format(tokenizer, DataArguments())
    docs = []
    for index, (question, answer) in enumerate(QUESTIONS):
        conversation = Conversation(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            RowRef("t", index),
        )
        docs.append(shifted(*encode_conversation(tokenizer, template, conversation, 256)))
    return docs


def loss_sum_and_count(model, batch):
    batch = dict(batch)
    targets = batch.pop("shift_labels")
    with token_loss_head(model, targets):
        losses = model(**batch, use_cache=False).logits
    return losses.sum(), targets.ne(-100).sum()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_separate_loss(tokenizer, arch, attn):
    model = build_tiny_model(arch, tokenizer, seed=3, attn_implementation=attn)
    collate = PaddingCollator(tokenizer.pad_token_id)
    docs = documents(tokenizer)
    separate = [loss_sum_and_count(model, collate([doc])) for doc in docs]
    expected = sum(s for s, _ in separate) / sum(c for _, c in separate)
    packed_rows = pack_documents(docs, 256, isolate=True)
    assert len(packed_rows) == 1
    total, count = loss_sum_and_count(model, collate(packed_rows))
    torch.testing.assert_close(total / count, expected, rtol=1e-5, atol=1e-6)
    # Without isolation documents see each other and the loss changes: the check above is not vacuous.
    leaky_total, _ = loss_sum_and_count(model, collate(pack_documents(docs, 256, isolate=False)))
    assert abs(leaky_total / count - expected) > 1e-4

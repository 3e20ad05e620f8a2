"""Greedy sample answers, to see at a glance what training changed."""

from __future__ import annotations

import torch

from ..data.chat_format import ChatFormat
from ..data.formats import Conversation


@torch.no_grad()
def generate_answer(
    model, tokenizer, template: ChatFormat, conversation: Conversation, max_new_tokens: int = 48
) -> str:
    """Answer the conversation's first user turn (with its system prompt) greedily."""
    messages = []
    for message in conversation.messages:
        messages.append(message)
        if message["role"] == "user":
            break
    ids = torch.tensor([template.prompt_ids(tokenizer, messages)], device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=template.stop_token_ids(tokenizer),
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


def sample_answers(
    model, tokenizer, template: ChatFormat, conversations: list[Conversation], when: str
) -> None:
    """Print each prompt with the expected and the generated answer."""
    lines = [f"\n[samples {when}]"]
    for conversation in conversations:
        user = next(m["content"] for m in conversation.messages if m["role"] == "user")
        expected = next(
            (m["content"] for m in conversation.messages if m["role"] in ("assistant", "function")), "(none)"
        )
        answer = generate_answer(model, tokenizer, template, conversation)
        lines.append(f"  prompt:   {user}\n  expected: {expected}\n  model:    {answer}")
    print("\n".join(lines) + "\n", flush=True)

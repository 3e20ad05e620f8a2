"""Greedy sample answers, to see at a glance what training changed."""

from __future__ import annotations

import torch

from ..data.formats import Conversation
from ..data.templates import resolve_chat_template


@torch.no_grad()
def generate_answer(
    model, tokenizer, template_name: str | None, conversation: Conversation, max_new_tokens: int = 48
) -> str:
    """Answer the conversation's first user turn (with its system prompt) greedily."""
    template = resolve_chat_template(tokenizer, template_name)
    messages = []
    for message in conversation.messages:
        messages.append(message)
        if message["role"] == "user":
            break
    prompt = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor(
        [tokenizer.encode(prompt, add_special_tokens=False)], device=next(model.parameters()).device
    )
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
            eos_token_id=tokenizer.eos_token_id,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


def sample_answers(
    model, tokenizer, template_name: str | None, conversations: list[Conversation], when: str
) -> None:
    """Print each prompt with the expected and the generated answer."""
    lines = [f"\n[samples {when}]"]
    for conversation in conversations:
        user = next(m["content"] for m in conversation.messages if m["role"] == "user")
        expected = next(m["content"] for m in conversation.messages if m["role"] == "assistant")
        answer = generate_answer(model, tokenizer, template_name, conversation)
        lines.append(f"  prompt:   {user}\n  expected: {expected}\n  model:    {answer}")
    print("\n".join(lines) + "\n", flush=True)

"""Chat templates and label masks.

Conversations are rendered with the tokenizer's Jinja chat template. Each assistant answer is
located by rendering the conversation turn by turn: the rendering of the first k messages must be a
prefix of the rendering of the first k+1, so the text between two renderings is exactly one prompt
or one answer. Pieces are tokenized separately, so the label mask is exact by construction.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..parallel.reduce import IGNORE_INDEX
from .errors import DataError
from .formats import Conversation
from .template_names import LLAMAFACTORY_TEMPLATES

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# LLaMA-Factory's `empty` template: contents back to back, eos after each answer.
EMPTY_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "empty": EMPTY_TEMPLATE}
# LLaMA-Factory template names whose format is ChatML: usable with tokenizers that ship no template.
CHATML_ALIASES = ("qwen", "qwen2", "qwen2_5", "qwen3", "chatml", "yi", "default")


def check_template_name(template: str | None) -> None:
    """A `template` must be one LLaMA-Factory registers (or a built-in one); else name the closest."""
    if template is None or template in BUILTIN_TEMPLATES or template in LLAMAFACTORY_TEMPLATES:
        return
    close = difflib.get_close_matches(template, sorted(LLAMAFACTORY_TEMPLATES | set(BUILTIN_TEMPLATES)), n=3)
    hint = f"did you mean {', '.join(repr(name) for name in close)}?" if close else "see LLaMA-Factory's list"
    raise DataError(f"template: {template!r} is not a LLaMA-Factory template name; {hint}")


def resolve_chat_template(tokenizer, template: str | None) -> str:
    """Pick the Jinja template: the tokenizer's own unless a built-in one is named."""
    check_template_name(template)
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template]
    own = getattr(tokenizer, "chat_template", None)
    if own:
        # LLaMA-Factory's named templates (llama3, qwen, ...) reproduce the model's own chat format,
        # which its tokenizer carries; that is the faithful choice here.
        return own
    if template is None or template in CHATML_ALIASES:
        return CHATML_TEMPLATE
    raise DataError(
        f"template: {template!r} is not built in and the tokenizer has no chat template; "
        f"use one of {sorted(BUILTIN_TEMPLATES)} or a tokenizer that ships a chat template"
    )


@dataclass
class EncodedTurn:
    """Token ids of one prompt piece and the answer that follows it."""

    prompt: list[int]
    answer: list[int]


def _render(tokenizer, template: str, messages: list[dict], generation_prompt: bool, tools) -> str:
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tools=tools,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


def renders_tools(tokenizer, template: str) -> bool:
    """Whether the template writes a `tools` list into the prompt (many templates ignore it)."""
    # Both shapes at once: LLaMA-Factory rows list {name, ...}; OpenAI-style templates read function.name.
    function = {
        "name": "probe_tool_7f3a",
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    }
    probe_tool = {"type": "function", "function": function, **function}
    try:
        text = _render(tokenizer, template, [{"role": "user", "content": "x"}], False, [probe_tool])
    except Exception:  # a template that cannot render tools at all does not render them
        return False
    return "probe_tool_7f3a" in text


def split_turns(tokenizer, template: str, conversation: Conversation) -> list[EncodedTurn]:
    """Tokenize a conversation into (prompt, answer) pieces whose concatenation is the full chat."""
    messages = conversation.messages
    tools = None
    if conversation.tools:
        import json

        try:
            tools = json.loads(conversation.tools)
        except json.JSONDecodeError as err:
            raise DataError.at(
                conversation.ref, f"column tools: not valid JSON ({err.msg} at character {err.pos})"
            ) from None
    turns: list[EncodedTurn] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_text = _render(tokenizer, template, messages[:index], True, tools)
        full_text = _render(tokenizer, template, messages[: index + 1], False, tools)
        if not prompt_text.startswith(rendered) or not full_text.startswith(prompt_text):
            raise DataError.at(
                conversation.ref,
                "the chat template renders earlier turns differently once later turns are added, so answer "
                "spans cannot be located; use template: chatml (or a prefix-stable template)",
            )
        turns.append(
            EncodedTurn(
                prompt=_encode(tokenizer, prompt_text[len(rendered) :]),
                answer=_encode(tokenizer, full_text[len(prompt_text) :]),
            )
        )
        rendered = full_text
    return turns


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def fit_lengths(prompt_len: int, answer_len: int, budget: int) -> tuple[int, int]:
    """How much of a prompt and an answer to keep within `budget` tokens.

    A short side is kept whole; otherwise the budget is shared in proportion to the lengths. The
    answer keeps at least one token and the prompt one (when it has any), so a truncated turn still
    trains on something and that token has a position to be predicted from.
    """
    if prompt_len + answer_len <= budget:
        return prompt_len, answer_len
    if prompt_len * 2 <= budget:
        return prompt_len, budget - prompt_len
    if answer_len * 2 <= budget:
        return budget - answer_len, answer_len
    answer_keep = max(1, budget * answer_len // (prompt_len + answer_len))
    prompt_keep = budget - answer_keep
    if prompt_keep == 0 and prompt_len > 0 and answer_keep > 1:
        prompt_keep, answer_keep = 1, answer_keep - 1
    return prompt_keep, answer_keep


def encode_conversation(
    tokenizer,
    template: str,
    conversation: Conversation,
    cutoff_len: int,
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> tuple[list[int], list[int]]:
    """Return (input_ids, labels) with labels IGNORE_INDEX outside trained answers (unshifted)."""
    return encode_turns(
        split_turns(tokenizer, template, conversation),
        cutoff_len,
        conversation.ref,
        train_on_prompt=train_on_prompt,
        mask_history=mask_history,
    )


def turns_length(turns: list[EncodedTurn]) -> int:
    """Tokens of the whole conversation before truncation."""
    return sum(len(turn.prompt) + len(turn.answer) for turn in turns)


def encode_turns(
    turns: list[EncodedTurn],
    cutoff_len: int,
    ref,
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> tuple[list[int], list[int]]:
    """`encode_conversation` for turns already tokenized; `ref` names the row in errors."""
    input_ids: list[int] = []
    labels: list[int] = []
    budget = cutoff_len
    last = len(turns) - 1
    for index, turn in enumerate(turns):
        if budget <= 1:
            break
        prompt_keep, answer_keep = fit_lengths(len(turn.prompt), len(turn.answer), budget)
        prompt, answer = turn.prompt[:prompt_keep], turn.answer[:answer_keep]
        budget -= len(prompt) + len(answer)
        trains_answer = not mask_history or index == last
        input_ids += prompt + answer
        labels += (prompt if train_on_prompt else [IGNORE_INDEX] * len(prompt)) + (
            answer if trains_answer else [IGNORE_INDEX] * len(answer)
        )
    if mask_history and len(turns) > 1 and not any(label != IGNORE_INDEX for label in labels[1:]):
        # The trained last turn was cut off entirely: keep it and as much recent history as fits.
        return _encode_last_turn_first(turns, cutoff_len, train_on_prompt)
    if not any(label != IGNORE_INDEX for label in labels[1:]):
        raise DataError.at(ref, f"no answer token survives cutoff_len={cutoff_len}; raise cutoff_len")
    return input_ids, labels


def _encode_last_turn_first(
    turns: list[EncodedTurn], cutoff_len: int, train_on_prompt: bool
) -> tuple[list[int], list[int]]:
    last = turns[-1]
    prompt_keep, answer_keep = fit_lengths(len(last.prompt), len(last.answer), cutoff_len)
    input_ids = last.prompt[:prompt_keep] + last.answer[:answer_keep]
    labels = (last.prompt[:prompt_keep] if train_on_prompt else [IGNORE_INDEX] * prompt_keep) + last.answer[
        :answer_keep
    ]
    budget = cutoff_len - len(input_ids)
    for turn in reversed(turns[:-1]):
        size = len(turn.prompt) + len(turn.answer)
        if size > budget:
            break
        turn_ids = turn.prompt + turn.answer
        input_ids = turn_ids + input_ids
        labels = (turn_ids if train_on_prompt else [IGNORE_INDEX] * size) + labels
        budget -= size
    return input_ids, labels

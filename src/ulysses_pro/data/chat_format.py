"""What a chat format gives the data pipeline: (prompt, answer) token ids per turn.

Two implementations: `JinjaFormat` renders with a Jinja chat template (the tokenizer's own when
`template` is omitted), and `lf_template.LfChatFormat` reproduces a LLaMA-Factory template
token for token. Truncation and labels (`truncation.py`) work on the turns either gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from .errors import DataError
from .formats import Conversation


@dataclass
class EncodedTurn:
    """Token ids of one prompt piece and the answer that follows it."""

    prompt: list[int]
    answer: list[int]


class ChatFormat(Protocol):
    name: str | None
    efficient_eos: bool

    def turns(
        self, tokenizer, conversation: Conversation, *, mask_history: bool = False
    ) -> list[EncodedTurn]:
        """(prompt, answer) ids per assistant turn; their concatenation is the whole chat."""

    def one_turn(self, tokenizer, conversation: Conversation) -> tuple[list[int], list[int]]:
        """Everything before the last answer, and that answer (pairwise and KTO rows)."""

    def prompt_ids(self, tokenizer, messages: list[dict], tools: str | None = None) -> list[int]:
        """A prompt ending where the model's answer starts (generation)."""

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids that end a generated answer."""

    def renders_tools(self, tokenizer) -> bool:
        """Whether a `tools` column reaches the prompt."""


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def parse_tools(conversation: Conversation):
    if not conversation.tools:
        return None
    try:
        return json.loads(conversation.tools)
    except json.JSONDecodeError as err:
        raise DataError.at(
            conversation.ref, f"column tools: not valid JSON ({err.msg} at character {err.pos})"
        ) from None


def _jinja_messages(messages: list[dict]) -> list[dict]:
    # Jinja chat templates know no separate tool-call role: a call is an assistant message.
    return [{**m, "role": "assistant"} if m["role"] == "function" else m for m in messages]


@dataclass(frozen=True)
class JinjaFormat:
    """A Jinja chat template. Each answer is located by rendering the chat turn by turn: the
    rendering of the first k messages must be a prefix of the rendering of the first k+1, so the
    text between two renderings is exactly one prompt or one answer."""

    template: str
    name: str | None = None
    efficient_eos: bool = False

    def _render(self, tokenizer, messages: list[dict], generation_prompt: bool, tools) -> str:
        return tokenizer.apply_chat_template(
            _jinja_messages(messages),
            chat_template=self.template,
            tools=tools,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )

    def turns(
        self, tokenizer, conversation: Conversation, *, mask_history: bool = False
    ) -> list[EncodedTurn]:
        messages = conversation.messages
        tools = parse_tools(conversation)
        turns: list[EncodedTurn] = []
        rendered = ""
        for index, message in enumerate(messages):
            if message["role"] not in ("assistant", "function"):
                continue
            prompt_text = self._render(tokenizer, messages[:index], True, tools)
            full_text = self._render(tokenizer, messages[: index + 1], False, tools)
            if not prompt_text.startswith(rendered) or not full_text.startswith(prompt_text):
                raise DataError.at(
                    conversation.ref,
                    "the chat template renders earlier turns differently once later turns are added, so "
                    "answer spans cannot be located; name a LLaMA-Factory template (e.g. template: chatml)",
                )
            turns.append(
                EncodedTurn(
                    prompt=_encode(tokenizer, prompt_text[len(rendered) :]),
                    answer=_encode(tokenizer, full_text[len(prompt_text) :]),
                )
            )
            rendered = full_text
        return turns

    def one_turn(self, tokenizer, conversation: Conversation) -> tuple[list[int], list[int]]:
        turns = self.turns(tokenizer, conversation)
        prompt = [token for turn in turns[:-1] for token in turn.prompt + turn.answer] + turns[-1].prompt
        return prompt, turns[-1].answer

    def prompt_ids(self, tokenizer, messages: list[dict], tools: str | None = None) -> list[int]:
        parsed = json.loads(tools) if tools else None
        return _encode(tokenizer, self._render(tokenizer, messages, True, parsed))

    def stop_token_ids(self, tokenizer) -> list[int]:
        return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def renders_tools(self, tokenizer) -> bool:
        # Both shapes at once: LLaMA-Factory rows list {name, ...}; OpenAI-style templates read function.name.
        function = {
            "name": "probe_tool_7f3a",
            "description": "",
            "parameters": {"type": "object", "properties": {}},
        }
        probe_tool = {"type": "function", "function": function, **function}
        try:
            text = self._render(tokenizer, [{"role": "user", "content": "x"}], False, [probe_tool])
        except Exception:  # a template that cannot render tools at all does not render them
            return False
        return "probe_tool_7f3a" in text

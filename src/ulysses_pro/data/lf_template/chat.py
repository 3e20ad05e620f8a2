"""A LLaMA-Factory template as the data pipeline's chat format."""

from __future__ import annotations

from dataclasses import dataclass

from ..chat_format import EncodedTurn, parse_tools
from ..errors import DataError
from ..formats import Conversation
from .template import LfTemplate


def _split(conversation: Conversation) -> tuple[list[dict], str]:
    """LLaMA-Factory passes the system prompt apart from the alternating messages."""
    messages = conversation.messages
    if messages and messages[0]["role"] == "system":
        return messages[1:], messages[0]["content"]
    return messages, ""


@dataclass(frozen=True)
class LfChatFormat:
    template: LfTemplate

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def efficient_eos(self) -> bool:
        return self.template.efficient_eos

    def _tools(self, conversation: Conversation) -> str | None:
        parse_tools(conversation)  # a malformed column is named with its row
        return conversation.tools

    def turns(
        self, tokenizer, conversation: Conversation, *, mask_history: bool = False
    ) -> list[EncodedTurn]:
        messages, system = _split(conversation)
        try:
            pairs = self.template.encode_multiturn(
                tokenizer, messages, system, self._tools(conversation), mask_history=mask_history
            )
        except DataError as err:
            raise DataError.at(conversation.ref, str(err)) from None
        return [EncodedTurn(prompt, answer) for prompt, answer in pairs]

    def one_turn(self, tokenizer, conversation: Conversation) -> tuple[list[int], list[int]]:
        messages, system = _split(conversation)
        try:
            return self.template.encode_oneturn(tokenizer, messages, system, self._tools(conversation))
        except DataError as err:
            raise DataError.at(conversation.ref, str(err)) from None

    def prompt_ids(self, tokenizer, messages: list[dict], tools: str | None = None) -> list[int]:
        body, system = _split(Conversation(messages, None))
        prompt, _ = self.template.encode_oneturn(
            tokenizer, [*body, {"role": "assistant", "content": ""}], system, tools
        )
        return prompt

    def stop_token_ids(self, tokenizer) -> list[int]:
        return self.template.stop_token_ids(tokenizer)

    def renders_tools(self, tokenizer) -> bool:
        return True

"""LLaMA-Factory's chat templates: slots of text and special tokens, filled per message.

A template is a handful of slot lists (user, assistant, system, function call, observation,
prefix) plus rules: the default system prompt, the stop words and whether the first one replaces
the tokenizer's eos, where the system prompt goes (its own slot, or inside the first user turn as
Llama 2 and Mistral do), and for reasoning templates the empty thought block added to answers
that carry none. Each slot element is tokenized on its own, as LLaMA-Factory does, so the ids
match its pipeline token for token (`tests/data/test_llamafactory_golden.py` checks that against
ids LLaMA-Factory 0.9.5 produced).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum

from ..errors import DataError
from .tools import parse_calls, tool_style, tools_text


class Special(Enum):
    """The tokenizer's own bos / eos, whatever their text (skipped when the tokenizer has none)."""

    BOS = "bos_token"
    EOS = "eos_token"


@dataclass(frozen=True)
class Token:
    """One token named by its text, looked up in the vocabulary."""

    text: str


Slot = str | Special | Token
BOS, EOS = Special.BOS, Special.EOS
PLACEHOLDER = "{{content}}"


def fill(slots: tuple[Slot, ...], **values: str) -> list[Slot]:
    """Each `{{name}}` replaced once by its value, in the order given (LLaMA-Factory's rule)."""
    out: list[Slot] = []
    for slot in slots:
        if isinstance(slot, str):
            for name, value in values.items():
                slot = slot.replace("{{" + name + "}}", value, 1)
        out.append(slot)
    return out


def slot_ids(tokenizer, elements: list[Slot]) -> list[int]:
    """Token ids of filled slots: each text encoded separately, without the tokenizer's specials."""
    ids: list[int] = []
    for element in elements:
        if isinstance(element, str):
            if element:
                ids += tokenizer.encode(element, add_special_tokens=False)
        elif isinstance(element, Token):
            ids.append(tokenizer.convert_tokens_to_ids(element.text))
        elif element is BOS and tokenizer.bos_token_id is not None:
            ids.append(tokenizer.bos_token_id)
        elif element is EOS and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids


@dataclass(frozen=True)
class LfTemplate:
    """One LLaMA-Factory template (see `registry.py` for the table, `define` for the defaults)."""

    name: str
    user: tuple[Slot, ...]
    assistant: tuple[Slot, ...]
    system: tuple[Slot, ...]
    function: tuple[Slot, ...]
    observation: tuple[Slot, ...]
    prefix: tuple[Slot, ...] = ()
    tool_format: str = "default"
    function_format: str = "default"
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    tool_call_words: tuple[str, str] = ("<tool_call>", "</tool_call>")
    efficient_eos: bool = False
    replace_eos: bool = False
    # Llama 2 / Mistral / Gemma: the system text is written inside the first user turn.
    system_in_first_user: bool = False
    # Qwen3-style: answers without a thought block get an empty one.
    reasoning: bool = False
    enable_thinking: bool | None = True
    preserve_thinking: bool = False

    # -- configuration ---------------------------------------------------------------------------

    def configured(self, data_args) -> LfTemplate:
        """This template with a run's `tool_format`, `default_system`, `enable_thinking` and
        `preserve_thinking` applied, as LLaMA-Factory's get_template_and_fix_tokenizer does."""
        changes: dict = {}
        tool_format = getattr(data_args, "tool_format", None)
        if tool_format is not None:
            tool_style(tool_format)
            changes.update(
                tool_format=tool_format,
                function_format=tool_format,
                function=(PLACEHOLDER,) if self.efficient_eos else (PLACEHOLDER, EOS),
            )
        if getattr(data_args, "default_system", None) is not None:
            changes["default_system"] = data_args.default_system
        if self.reasoning:
            changes["enable_thinking"] = getattr(data_args, "enable_thinking", True)
            changes["preserve_thinking"] = getattr(data_args, "preserve_thinking", False)
        if getattr(data_args, "train_on_prompt", False) and self.efficient_eos:
            raise DataError(
                f"template {self.name!r} does not support train_on_prompt (LLaMA-Factory refuses it too)"
            )
        return dataclasses.replace(self, **changes)

    def fix_tokenizer(self, tokenizer) -> None:
        """Set eos / pad / stop words on the tokenizer as LLaMA-Factory does. A template whose
        tokens the vocabulary lacks stops the run before anything changes: new tokens would need
        new embedding rows."""
        stop_words = list(self.stop_words)
        eos = stop_words.pop(0) if self.replace_eos else None
        if eos is None and tokenizer.eos_token_id is None:
            eos = "<|endoftext|>"
        vocab = tokenizer.get_vocab()
        missing = [word for word in ([eos] if eos else []) + stop_words if word not in vocab]
        if missing:
            raise DataError(
                f"template {self.name!r} needs the tokens {missing}, which this tokenizer does not have; "
                "use the template made for this model (or omit `template` to use the tokenizer's own chat template)"
            )
        if eos is not None and tokenizer.eos_token != eos:
            tokenizer.add_special_tokens({"eos_token": eos})
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if stop_words:
            _mark_special(tokenizer, stop_words)

    # -- encoding --------------------------------------------------------------------------------

    def encode_messages(
        self, tokenizer, messages: list[dict], system: str, tools: str | None
    ) -> list[list[int]]:
        """Ids per message: the first carries the prefix and the system prompt (with the tools)."""
        system = system or self.default_system
        encoded = []
        for index, message in enumerate(messages):
            elements: list[Slot] = []
            system_text = ""
            if index == 0:
                elements += list(self.prefix)
                if system or tools:
                    tool_text = tools_text(tool_style(self.tool_format), tools) if tools else ""
                    if self.system_in_first_user:
                        system_text = fill(self.system, content=system + tool_text)[0]
                    else:
                        elements += fill(self.system, content=system + tool_text)
            role, content = message["role"], message["content"]
            if role == "user":
                if self.system_in_first_user:
                    elements += fill(self.user, content=system_text + content)
                else:
                    elements += fill(self.user, content=content, idx=str(index // 2))
            elif role == "assistant":
                elements += fill(self.assistant, content=content)
            elif role == "tool":
                elements += fill(self.observation, content=content)
            elif role == "function":
                elements += fill(self.function, content=self._function_text(content))
            else:
                raise DataError(f"template {self.name!r}: unexpected role {role!r}")
            encoded.append(slot_ids(tokenizer, elements))
        return encoded

    def _function_text(self, content: str) -> str:
        """A tool-call message in the template's call format; a leading thought block (or text
        around a `<tool_call>` block) is kept in front."""
        style = tool_style(self.function_format)
        if self.system_in_first_user:  # LLaMA-Factory's Llama 2 class passes no thought/call words
            return style.calls(parse_calls(content))
        open_call, close_call = self.tool_call_words
        call = re.search(f"{re.escape(open_call)}(.*?){re.escape(close_call)}", content, re.DOTALL)
        if call is not None:
            return content.replace(call.group(0), "") + style.calls(parse_calls(call.group(1)))
        thought = re.search(self._thought_pattern(), content, re.DOTALL)
        if thought is None:
            return style.calls(parse_calls(content))
        return thought.group(0) + style.calls(parse_calls(content.replace(thought.group(0), "")))

    def _thought_pattern(self) -> str:
        return f"{re.escape(self.thought_words[0])}(.*?){re.escape(self.thought_words[1])}"

    def _without_thought(self, content: str) -> str:
        return re.sub(self._thought_pattern(), "", content, flags=re.DOTALL).lstrip("\n")

    def _has_thought(self, content: str) -> bool:
        return self.thought_words[0].strip() in content or self.thought_words[1].strip() in content

    def thought_ids(self, tokenizer) -> list[int]:
        """The empty thought block."""
        return tokenizer.encode("".join(self.thought_words), add_special_tokens=False)

    def encode_multiturn(
        self, tokenizer, messages: list[dict], system: str, tools: str | None, *, mask_history: bool = False
    ) -> list[tuple[list[int], list[int]]]:
        """(prompt, answer) ids per turn, for supervised rows."""
        if not self.reasoning:
            encoded = self.encode_messages(tokenizer, messages, system, tools)
            return [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]
        messages = [dict(m) for m in messages]
        if self.enable_thinking is False:
            for i in range(1, len(messages), 2):
                messages[i]["content"] = self._without_thought(messages[i]["content"])
        discard_history = mask_history and not self.preserve_thinking
        if discard_history:
            for i in range(1, len(messages) - 2, 2):
                messages[i]["content"] = self._without_thought(messages[i]["content"])
        encoded = self.encode_messages(tokenizer, messages, system, tools)
        for i in [len(messages) - 2] if discard_history else range(0, len(messages), 2):
            if not self._has_thought(messages[i + 1]["content"]):
                if not self.enable_thinking:  # the empty thought is given, not learned
                    encoded[i] = encoded[i] + self.thought_ids(tokenizer)
                else:
                    encoded[i + 1] = self.thought_ids(tokenizer) + encoded[i + 1]
        return [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]

    def encode_oneturn(
        self, tokenizer, messages: list[dict], system: str, tools: str | None
    ) -> tuple[list[int], list[int]]:
        """Everything before the last message as the prompt, the last message as the answer (the
        pairwise, KTO and generation layout)."""
        if self.reasoning:
            messages = [dict(m) for m in messages]
            if not self.preserve_thinking:
                for i in range(1, len(messages) - 2, 2):
                    messages[i]["content"] = self._without_thought(messages[i]["content"])
            if self.enable_thinking is False:
                messages[-1]["content"] = self._without_thought(messages[-1]["content"])
        encoded = self.encode_messages(tokenizer, messages, system, tools)
        prompt = [token for ids in encoded[:-1] for token in ids]
        answer = encoded[-1]
        if self.reasoning and not self._has_thought(messages[-1]["content"]):
            if not self.enable_thinking:
                prompt = prompt + self.thought_ids(tokenizer)
            else:
                answer = self.thought_ids(tokenizer) + answer
        return prompt, answer

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids that end a generated answer: eos and every stop word."""
        ids = {tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(w) for w in self.stop_words)}
        return sorted(i for i in ids if i is not None)


def _mark_special(tokenizer, words: list[str]) -> None:
    """Register tokens the vocabulary has as special, so text never splits them."""
    try:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": words}, replace_additional_special_tokens=False
        )
    except (TypeError, ValueError):
        tokenizer.add_tokens(words, special_tokens=True)


def define(
    name: str,
    *,
    user: tuple[Slot, ...] | None = None,
    assistant: tuple[Slot, ...] | None = None,
    system: tuple[Slot, ...] | None = None,
    function: tuple[Slot, ...] | None = None,
    function_format: str = "default",
    observation: tuple[Slot, ...] | None = None,
    efficient_eos: bool = False,
    **rules,
) -> LfTemplate:
    """A template with LLaMA-Factory's defaults for the slots not given: user and system are the
    bare content, the answer is content + eos (content alone with efficient_eos), a tool call is
    written into the answer slot, an observation into the user slot."""
    bare = (PLACEHOLDER,)
    answer = assistant or ((PLACEHOLDER,) if efficient_eos else (PLACEHOLDER, EOS))
    return LfTemplate(
        name=name,
        user=user or bare,
        assistant=answer,
        system=system or bare,
        function=function or answer,
        function_format=function_format,
        observation=observation or user or bare,
        efficient_eos=efficient_eos,
        **rules,
    )

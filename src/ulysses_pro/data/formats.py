"""Raw rows (alpaca, sharegpt, OpenAI messages, pretraining text) -> one normalised form.

Every check names the file, the row and what was expected: a malformed row stops the run,
it is never skipped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError, RowRef
from .registry import DatasetSpec

USER_SIDE = ("user", "tool")
# "tool" is an observation (a tool's output); "function" is an assistant turn that calls a tool.
ASSISTANT_SIDE = ("assistant", "function")


@dataclass
class Conversation:
    """A chat: optional system message, then alternating user-side / assistant-side turns."""

    messages: list[dict[str, str]]
    ref: RowRef
    tools: str | None = None
    # RL prompts (grpo): the row's columns that no role of dataset_info.json maps, for reward functions.
    columns: dict[str, Any] | None = None
    # The row's `images` / `videos` files, in placeholder order (data/multimodal).
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)


def require_mapping(row: Any, ref: RowRef) -> dict:
    if not isinstance(row, dict):
        raise DataError.at(ref, f"expected a JSON object, got {type(row).__name__}")
    return row


def text_field(row: dict, column: str | None, ref: RowRef, *, required: bool, what: str) -> str:
    if column is None:
        return ""
    if column not in row or row[column] is None:
        if required:
            raise DataError.at(ref, f"missing column {column!r} ({what}); columns present: {sorted(row)}")
        return ""
    value = row[column]
    if not isinstance(value, str):
        raise DataError.at(ref, f"column {column!r} ({what}) must be a string, got {type(value).__name__}")
    return value


def nonempty_answer(text: str, ref: RowRef, where: str) -> str:
    if not text.strip():
        raise DataError.at(
            ref, f"{where}: empty assistant turn; every assistant answer needs text to learn from"
        )
    return text


def alpaca_prompt(row: Any, spec: DatasetSpec, ref: RowRef) -> list[dict[str, str]]:
    """The messages before the answer: optional system, history [[q, a], ...], instruction (+ input)."""
    row = require_mapping(row, ref)
    instruction = text_field(row, spec.column("prompt"), ref, required=True, what="instruction")
    query = text_field(row, spec.column("query"), ref, required=False, what="input")
    system = text_field(row, spec.column("system"), ref, required=False, what="system")
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    history_column = spec.column("history")
    history = row.get(history_column) if history_column else None
    if history:
        if not isinstance(history, list):
            raise DataError.at(ref, f"column {history_column!r} must be a list of [question, answer] pairs")
        for turn, pair in enumerate(history):
            if not (
                isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            ):
                raise DataError.at(
                    ref, f"{history_column}[{turn}] must be a [question, answer] pair of strings"
                )
            messages.append({"role": "user", "content": pair[0]})
            messages.append(
                {"role": "assistant", "content": nonempty_answer(pair[1], ref, f"history[{turn}]")}
            )
    prompt = "\n".join(part for part in (instruction, query) if part)
    if not prompt.strip():
        raise DataError.at(ref, "empty instruction and input; the user turn needs text")
    messages.append({"role": "user", "content": prompt})
    return messages


def row_tools(row: dict, spec: DatasetSpec, ref: RowRef) -> str | None:
    """The `tools` column as a JSON string, if the dataset maps one."""
    column = spec.column("tools")
    tools = row.get(column) if column else None
    if isinstance(tools, (list, dict)):
        tools = json.dumps(tools, ensure_ascii=False)
    elif tools is not None and not isinstance(tools, str):
        raise DataError.at(
            ref, f"column {column!r} (tools) must be a JSON string or list, got {type(tools).__name__}"
        )
    return tools or None


def alpaca_to_conversation(row: Any, spec: DatasetSpec, ref: RowRef) -> Conversation:
    """instruction (+ input), output, optional system and history [[q, a], ...]."""
    messages = alpaca_prompt(row, spec, ref)
    response = text_field(row, spec.column("response"), ref, required=True, what="output")
    messages.append({"role": "assistant", "content": nonempty_answer(response, ref, "output")})
    return Conversation(messages, ref, row_tools(row, spec, ref))


def sharegpt_messages(row: Any, spec: DatasetSpec, ref: RowRef) -> list[dict[str, str]]:
    """from/value (or role/content via tags) messages in strict user/assistant alternation."""
    row = require_mapping(row, ref)
    column = spec.column("messages") or "conversations"
    raw = row.get(column)
    if not isinstance(raw, list) or not raw:
        raise DataError.at(
            ref, f"column {column!r} must be a non-empty list of messages; columns: {sorted(row)}"
        )
    tags = spec.tags
    if spec.formatting == "openai":
        raw = openai_turns(raw, tags, ref, column)
    roles = {
        tags["user_tag"]: "user",
        tags["observation_tag"]: "tool",
        tags["assistant_tag"]: "assistant",
        tags["function_tag"]: "function",
        tags["system_tag"]: "system",
    }
    messages: list[dict[str, str]] = []
    system = text_field(row, spec.column("system"), ref, required=False, what="system")
    start = 0
    first = raw[0]
    if isinstance(first, dict) and first.get(tags["role_tag"]) == tags["system_tag"]:
        # LLaMA-Factory: a leading system message wins over the system column.
        system = message_content(first, tags, ref, f"{column}[0]")
        start = 1
    if system:
        messages.append({"role": "system", "content": system})
    for position, message in enumerate(raw[start:], start=start):
        if not isinstance(message, dict):
            raise DataError.at(ref, f"{column}[{position}] must be an object, got {type(message).__name__}")
        tag = message.get(tags["role_tag"])
        if tag not in roles or roles[tag] == "system":
            raise DataError.at(
                ref,
                f"{column}[{position}]: unknown role {tag!r} under {tags['role_tag']!r}; expected one of "
                f"{[t for t, r in roles.items() if r != 'system']}",
            )
        expect_user = (position - start) % 2 == 0
        role = roles[tag]
        if expect_user != (role in USER_SIDE):
            expected = (
                f"{tags['user_tag']!r} or {tags['observation_tag']!r}"
                if expect_user
                else f"{tags['assistant_tag']!r} or {tags['function_tag']!r}"
            )
            raise DataError.at(
                ref, f"{column}[{position}]: wrong role order: expected {expected} here, got {tag!r}"
            )
        content = message_content(message, tags, ref, f"{column}[{position}]")
        if role in ASSISTANT_SIDE:
            nonempty_answer(content, ref, f"{column}[{position}]")
        messages.append({"role": role, "content": content})
    return messages


TOOL_RESPONSE_SEPARATOR = "\n</tool_response>\n<tool_response>\n"


def openai_turns(raw: list, tags: dict[str, str], ref: RowRef, column: str) -> list[dict]:
    """OpenAI chat messages as sharegpt-style turns, as LLaMA-Factory converts them: an assistant
    message with `tool_calls` becomes a function turn holding the calls' `function` objects as JSON,
    and consecutive tool messages become one observation joined by the tool-response separator."""
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    turns: list[dict] = []
    responses: list = []
    for position, message in enumerate(raw):
        if not isinstance(message, dict):
            raise DataError.at(ref, f"{column}[{position}] must be an object, got {type(message).__name__}")
        role, content = message.get(role_tag), message.get(content_tag)
        calls = message.get("tool_calls")
        if role in (tags["assistant_tag"], tags["function_tag"]) and calls:
            if not isinstance(calls, list) or not all(isinstance(c, dict) and "function" in c for c in calls):
                raise DataError.at(
                    ref, f'{column}[{position}]: tool_calls must be a list of {{"function": {{...}}}} objects'
                )
            role, content = (
                tags["function_tag"],
                json.dumps([c["function"] for c in calls], ensure_ascii=False),
            )
        if role == tags["observation_tag"]:
            responses.append(content)
            continue
        if responses:
            turns.append({role_tag: tags["observation_tag"], content_tag: _joined(responses, ref, column)})
            responses = []
        turns.append({role_tag: role, content_tag: content})
    if responses:
        turns.append({role_tag: tags["observation_tag"], content_tag: _joined(responses, ref, column)})
    return turns


def _joined(responses: list, ref: RowRef, column: str) -> str:
    if not all(isinstance(r, str) for r in responses):
        raise DataError.at(ref, f"{column}: a tool message's content must be a string")
    return TOOL_RESPONSE_SEPARATOR.join(responses)


def sharegpt_to_conversation(row: Any, spec: DatasetSpec, ref: RowRef) -> Conversation:
    """A sharegpt chat that ends with an assistant answer."""
    messages = sharegpt_messages(row, spec, ref)
    if messages[-1]["role"] not in ASSISTANT_SIDE:
        column = spec.column("messages") or "conversations"
        raise DataError.at(
            ref, f"{column}: the last message must be an assistant turn ({spec.tags['assistant_tag']!r})"
        )
    return Conversation(messages, ref, row_tools(row, spec, ref))


def message_content(message: dict, tags: dict[str, str], ref: RowRef, where: str) -> str:
    """The text of one message; `where` names it in errors (`conversations[3]`)."""
    content = message.get(tags["content_tag"])
    if not isinstance(content, str):
        raise DataError.at(
            ref, f"{where}: {tags['content_tag']!r} must be a string, got {type(content).__name__}"
        )
    return content


def to_conversation(row: Any, spec: DatasetSpec, ref: RowRef) -> Conversation:
    """Dispatch on the dataset's formatting."""
    if spec.formatting in ("sharegpt", "openai"):
        return sharegpt_to_conversation(row, spec, ref)
    return alpaca_to_conversation(row, spec, ref)


def to_prompt(row: Any, spec: DatasetSpec, ref: RowRef) -> Conversation:
    """An RL prompt (grpo): the conversation up to its last user turn, then its reference answer if the
    row has one (optional here), and the row's unmapped columns for the reward functions."""
    if spec.formatting in ("sharegpt", "openai"):
        messages = sharegpt_messages(row, spec, ref)
    else:
        messages = alpaca_prompt(row, spec, ref)
        response = text_field(row, spec.column("response"), ref, required=False, what="output")
        if response:
            messages.append({"role": "assistant", "content": response})
    body = messages[:-1] if messages[-1]["role"] in ASSISTANT_SIDE else messages
    if not body or body[-1]["role"] not in ("user", "tool"):
        raise DataError.at(ref, "an RL prompt must end with a user (or tool) turn, optionally followed by its answer")
    mapped = {column for column in spec.columns.values() if column}
    columns = {key: value for key, value in row.items() if key not in mapped}
    return Conversation(messages, ref, row_tools(row, spec, ref), columns)


def to_text(row: Any, spec: DatasetSpec, ref: RowRef) -> str:
    """Pretraining text: the `prompt` column (LLaMA-Factory maps it to `text`), else `text`."""
    row = require_mapping(row, ref)
    column = spec.column("prompt")
    if column not in row and "text" in row:
        column = "text"
    text = text_field(row, column, ref, required=True, what="pretraining text")
    if not text.strip():
        raise DataError.at(ref, f"column {column!r} is empty; pretraining rows need text")
    return text

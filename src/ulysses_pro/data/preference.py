"""Preference rows (chosen/rejected) and KTO rows (one answer plus a true/false label).

LLaMA-Factory's layouts: `ranking: true` datasets hold a prompt (alpaca instruction/input/history,
or sharegpt messages ending with a user turn) and `chosen` / `rejected` answers (strings, or
sharegpt message objects); KTO datasets hold an ordinary chat plus a boolean `kto_tag` column.
Every malformed row stops the run naming the file, the row and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat_format import ChatFormat
from .errors import DataError, RowRef
from .formats import (
    ASSISTANT_SIDE,
    Conversation,
    alpaca_prompt,
    message_content,
    nonempty_answer,
    require_mapping,
    row_tools,
    sharegpt_messages,
    to_conversation,
)
from .registry import DatasetSpec
from .truncation import labelled, prompt_answer_row


@dataclass
class PreferencePair:
    """A prompt (messages ending with a user turn) and two different answers to it."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    ref: RowRef
    tools: str | None = None
    # The row's `images` / `videos` files, in placeholder order (data/multimodal).
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)

    def conversation(self, answer: str) -> Conversation:
        return Conversation(
            [*self.prompt, {"role": "assistant", "content": answer}],
            self.ref,
            self.tools,
            images=self.images,
            videos=self.videos,
        )


@dataclass
class KtoExample:
    """A chat whose last assistant answer is labelled desirable (True) or undesirable (False)."""

    conversation: Conversation
    desirable: bool


def _answer(row: dict, spec: DatasetSpec, ref: RowRef, key: str) -> str:
    column = spec.column(key) or key
    if column not in row or row[column] is None:
        raise DataError.at(
            ref, f"missing column {column!r} ({key} answer); a ranking dataset needs chosen and rejected"
        )
    value = row[column]
    if isinstance(value, dict) and spec.formatting in ("sharegpt", "openai"):
        tags = spec.tags
        role = value.get(tags["role_tag"])
        if role not in (tags["assistant_tag"], tags["function_tag"]):
            raise DataError.at(
                ref, f"column {column!r}: role {role!r} is not an assistant turn ({tags['assistant_tag']!r})"
            )
        value = message_content(value, tags, ref, f"column {column!r}")
    if not isinstance(value, str):
        raise DataError.at(
            ref, f"column {column!r} ({key} answer) must be a string or a message, got {type(value).__name__}"
        )
    return nonempty_answer(value, ref, f"{key} answer")


def to_preference_pair(row: Any, spec: DatasetSpec, ref: RowRef) -> PreferencePair:
    """One `ranking: true` row -> prompt, chosen and rejected answers."""
    row = require_mapping(row, ref)
    if spec.formatting in ("sharegpt", "openai"):
        prompt = sharegpt_messages(row, spec, ref)
        if prompt[-1]["role"] in ASSISTANT_SIDE:
            column = spec.column("messages") or "conversations"
            raise DataError.at(
                ref,
                f"{column}: a preference prompt must end with a user turn; the answers go in the "
                f"{spec.column('chosen') or 'chosen'!r} and {spec.column('rejected') or 'rejected'!r} columns",
            )
    else:
        prompt = alpaca_prompt(row, spec, ref)
    chosen, rejected = _answer(row, spec, ref, "chosen"), _answer(row, spec, ref, "rejected")
    if chosen.strip() == rejected.strip():
        raise DataError.at(
            ref, "chosen and rejected answers are identical; a preference needs two different answers"
        )
    return PreferencePair(prompt, chosen, rejected, ref, row_tools(row, spec, ref))


def to_kto_example(row: Any, spec: DatasetSpec, ref: RowRef) -> KtoExample:
    """One KTO row -> chat plus its desirable/undesirable label."""
    row = require_mapping(row, ref)
    column = spec.column("kto_tag")
    if column is None:
        raise DataError(
            f"{spec.path}: dataset {spec.name!r} maps no kto_tag column; stage kto needs a true/false label "
            'per row (columns: {"kto_tag": "label"})'
        )
    if column not in row or row[column] is None:
        raise DataError.at(
            ref, f"missing column {column!r} (kto_tag); every KTO row needs a true/false label"
        )
    label = row[column]
    if not isinstance(label, bool):
        raise DataError.at(ref, f"column {column!r} (kto_tag) must be true or false, got {label!r}")
    return KtoExample(to_conversation(row, spec, ref), label)


# -- token ids (rows in LLaMA-Factory's convention: unshifted labels, -100 where masked) -----------


def _with_eos(tokenizer, template: ChatFormat, answer: list[int]) -> list[int]:
    # Templates whose answers carry no eos of their own (GLM-4's efficient_eos) get one here.
    return answer + [tokenizer.eos_token_id] if template.efficient_eos else answer


def pair_pieces(
    tokenizer, template: ChatFormat, pair: PreferencePair
) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the shared prompt, the chosen answer and the rejected answer, untruncated."""
    prompt, chosen = template.one_turn(tokenizer, pair.conversation(pair.chosen))
    other_prompt, rejected = template.one_turn(tokenizer, pair.conversation(pair.rejected))
    if other_prompt != prompt:
        raise DataError.at(
            pair.ref, "the chat template renders the prompt differently for chosen and rejected"
        )
    return prompt, _with_eos(tokenizer, template, chosen), _with_eos(tokenizer, template, rejected)


def pair_row(
    prompt: list[int], chosen: list[int], rejected: list[int], cutoff_len: int
) -> dict[str, list[int]]:
    """`chosen_*` and `rejected_*` sequences sharing one prompt, fitted into cutoff_len."""
    prompt, (chosen, rejected) = prompt_answer_row(prompt, [chosen, rejected], cutoff_len)
    row = {}
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        row[f"{name}_input_ids"], row[f"{name}_labels"] = labelled(prompt, answer)
    return row


def kto_pieces(tokenizer, template: ChatFormat, example: KtoExample) -> tuple[list[int], list[int]]:
    """Token ids of a KTO row's prompt and answer, untruncated."""
    prompt, answer = template.one_turn(tokenizer, example.conversation)
    return prompt, _with_eos(tokenizer, template, answer)


def pair_kto(
    examples: list[KtoExample], pieces: list[tuple[list[int], list[int]]], cutoff_len: int
) -> list[dict]:
    """KTO rows from each example's (prompt, answer): row i's mismatched `kl_*` sequence is its prompt
    with row i+1's answer, whose log-ratio estimates KTO's reference point. Both sequences are
    fitted into cutoff_len on their own, as in LLaMA-Factory (which pairs within a batch instead)."""
    rows = []
    for index, (example, (prompt, answer)) in enumerate(zip(examples, pieces)):
        other = pieces[(index + 1) % len(pieces)][1]
        kept, (answer,) = prompt_answer_row(prompt, [answer], cutoff_len)
        kl_kept, (other,) = prompt_answer_row(prompt, [other], cutoff_len)
        input_ids, labels = labelled(kept, answer)
        kl_input_ids, kl_labels = labelled(kl_kept, other)
        rows.append(
            {
                "input_ids": input_ids,
                "labels": labels,
                "kl_input_ids": kl_input_ids,
                "kl_labels": kl_labels,
                "kto_tag": example.desirable,
            }
        )
    return rows

"""Preference rows (chosen/rejected) and KTO rows (one answer plus a true/false label).

LLaMA-Factory's layouts: `ranking: true` datasets hold a prompt (alpaca instruction/input/history,
or sharegpt messages ending with a user turn) and `chosen` / `rejected` answers (strings, or
sharegpt message objects); KTO datasets hold an ordinary chat plus a boolean `kto_tag` column.
Every malformed row stops the run naming the file, the row and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import DataError, RowRef
from .formats import (
    Conversation,
    alpaca_prompt,
    message_content,
    nonempty_answer,
    require_mapping,
    row_tools,
    sharegpt_messages,
    to_conversation,
)
from .packing import Document, shifted
from .registry import DatasetSpec
from .templates import IGNORE_INDEX, fit_lengths, split_turns


@dataclass
class PreferencePair:
    """A prompt (messages ending with a user turn) and two different answers to it."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    ref: RowRef
    tools: str | None = None

    def conversation(self, answer: str) -> Conversation:
        return Conversation([*self.prompt, {"role": "assistant", "content": answer}], self.ref, self.tools)


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
    if isinstance(value, dict) and spec.formatting == "sharegpt":
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
    if spec.formatting == "sharegpt":
        prompt = sharegpt_messages(row, spec, ref)
        if prompt[-1]["role"] == "assistant":
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


# -- token ids --------------------------------------------------------------------------------------


def prompt_and_answer(tokenizer, template: str, conversation: Conversation) -> tuple[list[int], list[int]]:
    """Token ids of everything before the last assistant answer, and of that answer."""
    turns = split_turns(tokenizer, template, conversation)
    prompt = [token for turn in turns[:-1] for token in turn.prompt + turn.answer] + turns[-1].prompt
    return prompt, turns[-1].answer


def _document(prompt: list[int], answer: list[int]) -> Document:
    """Prompt + answer with labels on the answer only (shifted)."""
    return shifted(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)


def truncate(
    prompt: list[int], answers: list[list[int]], cutoff_len: int
) -> tuple[list[int], list[list[int]]]:
    """Fit the prompt and the longest answer into cutoff_len; a long prompt keeps its end (the question
    next to the answer), long answers keep their beginning."""
    prompt_keep, answer_keep = fit_lengths(len(prompt), max(len(a) for a in answers), cutoff_len)
    return prompt[len(prompt) - prompt_keep :], [a[:answer_keep] for a in answers]


def encode_pair(tokenizer, template: str, pair: PreferencePair, cutoff_len: int) -> dict[str, list[int]]:
    """`chosen_*` and `rejected_*` documents sharing one prompt, each at most cutoff_len tokens."""
    return pair_row(*pair_pieces(tokenizer, template, pair), cutoff_len)


def pair_pieces(tokenizer, template: str, pair: PreferencePair) -> tuple[list[int], list[int], list[int]]:
    """Token ids of the shared prompt, the chosen answer and the rejected answer, untruncated."""
    prompt, chosen = prompt_and_answer(tokenizer, template, pair.conversation(pair.chosen))
    other_prompt, rejected = prompt_and_answer(tokenizer, template, pair.conversation(pair.rejected))
    if other_prompt != prompt:
        raise DataError.at(
            pair.ref, "the chat template renders the prompt differently for chosen and rejected"
        )
    return prompt, chosen, rejected


def pair_row(
    prompt: list[int], chosen: list[int], rejected: list[int], cutoff_len: int
) -> dict[str, list[int]]:
    """The two documents of a pair, fitted into cutoff_len."""
    prompt, (chosen, rejected) = truncate(prompt, [chosen, rejected], cutoff_len)
    row = {}
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        for key, value in _document(prompt, answer).items():
            row[f"{name}_{key}"] = value
    return row


def encode_kto(tokenizer, template: str, examples: list[KtoExample], cutoff_len: int) -> list[dict]:
    """Each example's (prompt, answer) document plus a mismatched one, (its prompt, the next example's
    answer), whose log-ratio estimates KTO's reference point."""
    return pair_kto(
        examples, [prompt_and_answer(tokenizer, template, e.conversation) for e in examples], cutoff_len
    )


def pair_kto(
    examples: list[KtoExample], pieces: list[tuple[list[int], list[int]]], cutoff_len: int
) -> list[dict]:
    """KTO rows from each example's tokenized (prompt, answer); row i's mismatched answer is row i+1's."""
    rows = []
    for index, (example, (prompt, answer)) in enumerate(zip(examples, pieces)):
        other = pieces[(index + 1) % len(pieces)][1]
        kept_prompt, (answer, other) = truncate(prompt, [answer, other], cutoff_len)
        matched, mismatched = _document(kept_prompt, answer), _document(kept_prompt, other)
        rows.append(
            {
                **matched,
                "kl_input_ids": mismatched["input_ids"],
                "kl_shift_labels": mismatched["shift_labels"],
                "kto_label": example.desirable,
            }
        )
    return rows

"""Fitting turns into `cutoff_len` and choosing which tokens train, by LLaMA-Factory's rules.

The budget split is LLaMA-Factory's `infer_seqlen` (`data/processor/processor_utils.py`), so a row
truncated here has the same tokens as there; the supervised loop is its `SupervisedDatasetProcessor`
(turn by turn, the budget shrinking; with `mask_history` the last turn first). Labels are
unshifted, IGNORE_INDEX where nothing trains.
"""

from __future__ import annotations

from ..parallel.reduce import IGNORE_INDEX
from .chat_format import EncodedTurn
from .errors import DataError, RowRef


def infer_seqlen(prompt_len: int, answer_len: int, budget: int) -> tuple[int, int]:
    """How many prompt and answer tokens to keep within `budget`.

    An answer under half the budget is kept whole (the prompt is cut); else a prompt under half is
    kept whole (the answer is cut); else the answer gets its proportional share, rounded down.
    """
    if answer_len * 2 < budget:
        answer_cap = budget
    elif prompt_len * 2 < budget:
        answer_cap = budget - prompt_len
    else:
        answer_cap = int(budget * (answer_len / (prompt_len + answer_len)))
    answer_keep = min(answer_cap, answer_len)
    return min(max(budget - answer_keep, 0), prompt_len), answer_keep


def turns_length(turns: list[EncodedTurn]) -> int:
    """Tokens of the whole conversation before truncation."""
    return sum(len(turn.prompt) + len(turn.answer) for turn in turns)


def supervised_row(
    turns: list[EncodedTurn],
    cutoff_len: int,
    ref: RowRef | None,
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
    efficient_eos_id: int | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a chat: every answer trains, or with `mask_history` only the last.

    `efficient_eos_id`: templates that end answers with no eos of their own (GLM-4) get one eos at
    the very end, and each later prompt's first token is labelled eos, as in LLaMA-Factory.
    """
    used = 1 if efficient_eos_id is not None else 0
    pieces: list[tuple[list[int], list[int]]] = []
    for index, turn in enumerate(reversed(turns) if mask_history else turns):
        if used >= cutoff_len:
            break
        prompt_keep, answer_keep = infer_seqlen(len(turn.prompt), len(turn.answer), cutoff_len - used)
        prompt, answer = turn.prompt[:prompt_keep], turn.answer[:answer_keep]
        used += prompt_keep + answer_keep
        if train_on_prompt:
            prompt_labels = prompt
        elif efficient_eos_id is not None and index != 0 and prompt_keep:
            prompt_labels = [efficient_eos_id] + [IGNORE_INDEX] * (prompt_keep - 1)
        else:
            prompt_labels = [IGNORE_INDEX] * prompt_keep
        answer_labels = [IGNORE_INDEX] * answer_keep if mask_history and index != 0 else answer
        pieces.append((prompt + answer, prompt_labels + answer_labels))
    if mask_history:
        pieces.reverse()
    input_ids = [token for ids, _ in pieces for token in ids]
    labels = [label for _, labels in pieces for label in labels]
    if efficient_eos_id is not None:
        input_ids.append(efficient_eos_id)
        labels.append(efficient_eos_id)
    # Position 0 is never predicted (labels shift by one), so a row needs a target after it.
    if not any(label != IGNORE_INDEX for label in labels[1:]):
        message = f"no answer token survives cutoff_len={cutoff_len}; raise cutoff_len"
        raise DataError.at(ref, message) if ref else DataError(message)
    return input_ids, labels


def prompt_answer_row(
    prompt: list[int], answers: list[list[int]], cutoff_len: int
) -> tuple[list[int], list[list[int]]]:
    """One prompt shared by answers (a preference pair): the budget is split against the longest
    answer, the prompt keeps its beginning and every answer is cut to the same length."""
    prompt_keep, answer_keep = infer_seqlen(len(prompt), max(len(a) for a in answers), cutoff_len)
    return prompt[:prompt_keep], [a[:answer_keep] for a in answers]


def labelled(prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    """Prompt + answer with only the answer labelled."""
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer

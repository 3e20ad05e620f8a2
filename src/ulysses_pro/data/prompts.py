"""RL prompts (grpo): dataset rows -> the prompt ids the policy continues, and what rewards read.

A row is read as for sft, except that its answer is optional: when present it is the reference answer
(`answer`) that reward functions may compare against. Columns that dataset_info.json maps to no role
travel along too, so a reward function can read e.g. a `solution` column. Prompts are rendered
with the template's generation prompt (`ChatFormat.prompt_ids`), as `chat` renders them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from torch.utils.data import Dataset

from .errors import DataError
from .formats import ASSISTANT_SIDE, Conversation
from .pipeline import DatasetBundle, load_rows, split_held_out
from .templates import chat_format

logger = logging.getLogger(__name__)


@dataclass
class PromptRow:
    """One prompt: its ids, the text reward functions see, and the row's reference answer and columns."""

    prompt_ids: list[int]
    prompt: str  # the last user (or tool) message
    answer: str | None
    columns: dict[str, Any]
    where: str  # file:row, for messages about this prompt

    def reward_columns(self) -> dict[str, Any]:
        """What a reward function receives about this row beyond prompt and completion."""
        return {**self.columns, "answer": self.answer}


class PromptDataset(Dataset):
    """Prompt rows; a DataLoader over it yields lists of `PromptRow` (no tensors: they are generated from)."""

    def __init__(self, rows: list[PromptRow]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PromptRow:
        return self.rows[index]

    def row_lengths(self) -> list[int]:
        return [len(row.prompt_ids) for row in self.rows]


@dataclass
class PromptCollator:
    """The batch is the rows themselves: completions are sampled from them before any tensor exists.
    (Built like the other collators: a pad id, and NEFTune lengths, which prompts never carry.)"""

    pad_token_id: int
    document_lengths: bool = False

    def __call__(self, rows: list[PromptRow]) -> list[PromptRow]:
        return list(rows)


def prompt_row(conversation: Conversation, tokenizer, template) -> PromptRow:
    """The prompt ids of a conversation, without its trailing answer (which becomes `answer`)."""
    messages = conversation.messages
    answer = None
    if messages[-1]["role"] in ASSISTANT_SIDE:
        messages, answer = messages[:-1], messages[-1]["content"]
    ids = template.prompt_ids(tokenizer, messages, conversation.tools)
    ref = conversation.ref
    return PromptRow(
        ids, messages[-1]["content"], answer, dict(conversation.columns or {}), f"{ref.file}:{ref.index}"
    )


def _encode(items: list, tokenizer, template, cutoff_len: int, desc: str) -> PromptDataset | None:
    if not items:
        return None
    rows = [prompt_row(conversation, tokenizer, template) for _, conversation in items]
    kept = [row for row in rows if len(row.prompt_ids) < cutoff_len]
    if not kept:
        raise DataError(
            f"{desc}: every prompt has cutoff_len={cutoff_len} tokens or more; the longest is "
            f"{max(len(r.prompt_ids) for r in rows)}. Raise cutoff_len (prompt + completion)"
        )
    if len(kept) < len(rows):
        logger.warning(
            "%s: %d of %d prompts skipped: cutoff_len=%d leaves them no room for a completion",
            desc,
            len(rows) - len(kept),
            len(rows),
            cutoff_len,
        )
    logger.info("%s: %d prompts, longest %d tokens", desc, len(kept), max(len(r.prompt_ids) for r in kept))
    return PromptDataset(kept)


def build_prompt_datasets(data_args, tokenizer, seed: int = 42) -> DatasetBundle:
    """The training (and held-out) prompts of an RL stage; a few of them for the sample generations."""
    template = chat_format(tokenizer, data_args)
    items = load_rows(data_args, "grpo", seed)
    # The held-out prompts, chosen as for sft: `eval_dataset`, or `val_size` rows of the training set.
    held = (
        load_rows(replace(data_args, dataset=data_args.eval_dataset), "grpo", seed)
        if data_args.eval_dataset
        else []
    )
    if data_args.val_size:
        items, held = split_held_out(items, data_args.val_size, seed)
    train = _encode(items, tokenizer, template, data_args.cutoff_len, "train")
    evaluation = _encode(held, tokenizer, template, data_args.cutoff_len, "eval")
    samples = [conversation for _, conversation in (held or items)[:3]]
    return DatasetBundle(train, evaluation, samples, template)


def answer_suffix_ids(template, tokenizer) -> list[int]:
    """The tokens a chat format puts after an answer's stop token (chatml: the newline after
    `<|im_end|>`; Llama 3: none). Training rows end with them, so a reward model trained on such
    rows scores a sampled completion only once they follow its stop token."""
    from .errors import RowRef

    probe = Conversation(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], RowRef("<probe>", 0)
    )
    _, answer = template.one_turn(tokenizer, probe)
    stops = set(template.stop_token_ids(tokenizer))
    ends = [position for position, token in enumerate(answer) if token in stops]
    return answer[ends[-1] + 1 :] if ends else []

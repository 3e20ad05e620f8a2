"""Normalised rows -> token ids, in this process or in a pool of workers, with the same result.

Workers get contiguous chunks of `preprocessing_batch_size` rows and results come back in chunk
order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from .errors import DataError
from .packing import Document, shifted, windows
from .preference import pair_pieces, pair_row, prompt_and_answer
from .templates import encode_turns, split_turns, turns_length


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs besides the tokenizer."""

    stage: str
    template: str | None
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    skip_invalid_rows: bool = False


@dataclass
class Encoded:
    """One row's output: documents (pt: windows; sft: one), a preference row, or KTO (prompt, answer)
    pieces; `cut` when cutoff_len shortened it; `error` instead when the row was skipped."""

    outputs: list[Any]
    cut: bool = False
    error: str | None = None


def encode_item(tokenizer, settings: EncodeSettings, item: Any) -> Encoded:
    """Tokenize one normalised row (str, Conversation, PreferencePair or KtoExample)."""
    stage, cutoff = settings.stage, settings.cutoff_len
    if stage == "pt":
        eos = tokenizer.eos_token_id
        ids = tokenizer.encode(item, add_special_tokens=True) + ([eos] if eos is not None else [])
        # A document longer than a row becomes several windows, so no text is dropped.
        return Encoded([shifted(w, w) for w in windows(ids, cutoff)], cut=len(ids) > cutoff)
    if stage in ("dpo", "rm"):
        prompt, chosen, rejected = pair_pieces(tokenizer, settings.template, item)
        cut = len(prompt) + max(len(chosen), len(rejected)) > cutoff
        return Encoded([pair_row(prompt, chosen, rejected, cutoff)], cut=cut)
    if stage == "kto":
        prompt, answer = prompt_and_answer(tokenizer, settings.template, item.conversation)
        return Encoded([(prompt, answer)], cut=len(prompt) + len(answer) > cutoff)
    turns = split_turns(tokenizer, settings.template, item)
    input_ids, labels = encode_turns(
        turns,
        cutoff,
        item.ref,
        train_on_prompt=settings.train_on_prompt,
        mask_history=settings.mask_history,
    )
    return Encoded([shifted(input_ids, labels)], cut=turns_length(turns) > cutoff)


def _encode_checked(tokenizer, settings: EncodeSettings, item: Any) -> Encoded:
    try:
        return encode_item(tokenizer, settings, item)
    except DataError as err:
        if not settings.skip_invalid_rows:
            raise
        return Encoded([], error=str(err))


_worker: dict[str, Any] = {}


def _start_worker(tokenizer, settings: EncodeSettings) -> None:
    _worker["tokenizer"], _worker["settings"] = tokenizer, settings


def _encode_chunk(items: list[Any]) -> list[Encoded]:
    return [_encode_checked(_worker["tokenizer"], _worker["settings"], item) for item in items]


def _pool_context():
    # fork shares the loaded tokenizer for free; platforms without it start fresh interpreters.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def encode_all(
    items: list[Any],
    tokenizer,
    settings: EncodeSettings,
    *,
    workers: int | None = None,
    batch_size: int = 1000,
    desc: str = "tokenizing",
) -> list[Encoded]:
    """`encode_item` over every row, in order; `workers` > 1 spreads chunks over processes."""
    batch_size = max(1, batch_size)
    chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    # Bars only for long work, and only on a terminal (disable=None): log files stay readable.
    quiet = len(items) < 2000
    if not workers or workers <= 1 or len(chunks) < 2:
        return [
            _encode_checked(tokenizer, settings, item)
            for item in tqdm(items, desc=desc, disable=True if quiet else None, leave=False)
        ]
    # The Rust tokenizer's own thread pool must not be live across fork (it would deadlock).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out: list[Encoded] = []
    with ProcessPoolExecutor(
        max_workers=min(workers, len(chunks)),
        mp_context=_pool_context(),
        initializer=_start_worker,
        initargs=(tokenizer, settings),
    ) as pool:
        results = pool.map(_encode_chunk, chunks)
        for chunk in tqdm(
            results,
            desc=f"{desc} ({workers} workers)",
            total=len(chunks),
            disable=True if quiet else None,
            leave=False,
        ):
            out.extend(chunk)
    return out


def documents_of(encoded: list[Encoded]) -> tuple[list[Document], int]:
    """All documents of token stages, and how many rows cutoff_len cut."""
    return [doc for e in encoded for doc in e.outputs], sum(e.cut for e in encoded)

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

from ..parallel.reduce import IGNORE_INDEX
from .chat_format import ChatFormat
from .errors import DataError
from .multimodal.rows import (
    MEDIA_KINDS,
    VisionSettings,
    expand_media,
    expand_pair_media,
    fit_whole,
    mask_visual_tokens,
)
from .packing import Document, windows
from .preference import kto_pieces, pair_pieces, pair_row
from .truncation import supervised_row, turns_length


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs besides the tokenizer."""

    stage: str
    template: ChatFormat | None
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    skip_invalid_rows: bool = False
    pretrain_eos: str | None = None  # appended to each pretraining text
    vision: VisionSettings | None = None  # how a vision template expands images and videos


SEQUENCE_PREFIXES = ("", "chosen_", "rejected_", "kl_")


def to_document(row: dict) -> Document:
    """A row in LLaMA-Factory's convention (unshifted `labels`, `kto_tag`) as this package trains it:
    each `*labels` shifted left by one into `*shift_labels`, so packing never predicts across
    documents."""
    document: Document = {}
    for prefix in SEQUENCE_PREFIXES:
        if prefix + "input_ids" in row:
            labels = row[prefix + "labels"]
            document[prefix + "input_ids"] = list(row[prefix + "input_ids"])
            document[prefix + "shift_labels"] = list(labels[1:]) + [IGNORE_INDEX]
    if "kto_tag" in row:
        document["kto_label"] = row["kto_tag"]
    for kind in MEDIA_KINDS:
        if kind in row:
            document[kind] = list(row[kind])
    return document


def pretrain_ids(tokenizer, text: str, eos: str | None) -> list[int]:
    """A pretraining text with the eos appended, tokenized as LLaMA-Factory does: no specials
    added, except a bos in front when the tokenizer asks for one (`add_bos_token`)."""
    ids = tokenizer.encode(text + (eos or ""), add_special_tokens=False)
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def llamafactory_rows(tokenizer, settings: EncodeSettings, item: Any) -> tuple[list[dict], bool]:
    """One normalised row as LLaMA-Factory's processors emit it (unshifted labels, -100 where masked),
    and whether cutoff_len cut it. pt: one row per window; KTO: without its mismatched `kl_*`
    sequence, which pairs rows (`preference.pair_kto`)."""
    stage, cutoff = settings.stage, settings.cutoff_len
    if stage == "pt":
        ids = pretrain_ids(tokenizer, item, settings.pretrain_eos)
        # A document longer than a row becomes several windows, so no text is dropped.
        return [{"input_ids": w, "labels": list(w)} for w in windows(ids, cutoff)], len(ids) > cutoff
    if stage in ("dpo", "rm"):
        item, images, videos = expand_pair_media(item, settings.vision)
        prompt, chosen, rejected = pair_pieces(tokenizer, settings.template, item)
        longest = len(prompt) + max(len(chosen), len(rejected))
        row = pair_row(prompt, chosen, rejected, cutoff)
        if images or videos:
            fit_whole(longest, cutoff, item.ref)  # the prompt holds the visual tokens; labels mask it
            row.update(images=images, videos=videos)
        return [row], longest > cutoff
    if stage == "kto":
        raise ValueError("KTO rows are paired across the dataset; use preference.pair_kto")
    template = settings.template
    item, images, videos = expand_media(item, settings.vision)
    turns = template.turns(tokenizer, item, mask_history=settings.mask_history)
    with_media = bool(images or videos)
    if with_media:
        fit_whole(turns_length(turns), cutoff, item.ref)
    input_ids, labels = supervised_row(
        turns,
        cutoff,
        item.ref,
        train_on_prompt=settings.train_on_prompt,
        mask_history=settings.mask_history,
        efficient_eos_id=tokenizer.eos_token_id if template.efficient_eos else None,
    )
    row = {"input_ids": input_ids, "labels": labels}
    if with_media:
        row.update(labels=mask_visual_tokens(tokenizer, input_ids, labels), images=images, videos=videos)
    return [row], turns_length(turns) > cutoff


@dataclass
class Encoded:
    """One row's output: documents (pt: windows; sft: one), a preference row, or KTO (prompt, answer)
    pieces; `cut` when cutoff_len shortened it; `error` instead when the row was skipped."""

    outputs: list[Any]
    cut: bool = False
    error: str | None = None


def encode_item(tokenizer, settings: EncodeSettings, item: Any) -> Encoded:
    """Tokenize one normalised row (str, Conversation, PreferencePair or KtoExample)."""
    if settings.stage == "kto":
        prompt, answer = kto_pieces(tokenizer, settings.template, item)
        return Encoded([(prompt, answer)], cut=len(prompt) + len(answer) > settings.cutoff_len)
    rows, cut = llamafactory_rows(tokenizer, settings, item)
    return Encoded([to_document(row) for row in rows], cut=cut)


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


def encode_conversation(
    tokenizer,
    template: ChatFormat,
    conversation,
    cutoff_len: int,
    *,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one supervised chat, labels unshifted."""
    settings = EncodeSettings(
        "sft", template, cutoff_len, train_on_prompt=train_on_prompt, mask_history=mask_history
    )
    (row,), _ = llamafactory_rows(tokenizer, settings, conversation)
    return row["input_ids"], row["labels"]

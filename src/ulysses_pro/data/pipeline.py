"""dataset names -> tokenized, split and (optionally) packed torch datasets."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .errors import DataError
from .files import read_rows
from .formats import Conversation, to_conversation, to_text
from .mixing import mix, parse_probabilities
from .packing import Document, chunk_stream, pack_documents, shifted
from .preference import (
    KtoExample,
    PreferencePair,
    encode_kto,
    encode_pair,
    to_kto_example,
    to_preference_pair,
)
from .registry import load_dataset_specs
from .templates import IGNORE_INDEX, encode_conversation, resolve_chat_template

logger = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """An in-memory list of rows of token ids."""

    def __init__(self, rows: list[Document]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Document:
        return self.rows[index]


@dataclass
class DatasetBundle:
    """What a stage trains and evaluates on, plus a few prompts to show generations for."""

    train: TokenizedDataset | None
    eval: TokenizedDataset | None
    sample_prompts: list[Conversation]


PAIRWISE_STAGES = ("dpo", "rm")


def _check_layout(spec, stage: str) -> None:
    pairwise = stage in PAIRWISE_STAGES
    if spec.ranking and not pairwise:
        raise DataError(
            f"dataset {spec.name!r} is a preference dataset (ranking: true); stage {stage} needs "
            f"{'KTO rows with a kto_tag column' if stage == 'kto' else 'SFT rows'}"
        )
    if pairwise and not spec.ranking:
        raise DataError(
            f"dataset {spec.name!r} has no ranking: true; stage {stage} needs preference rows with "
            "chosen and rejected answers (set ranking: true and map the chosen/rejected columns)"
        )


def _convert(row, spec, ref, stage: str):
    if stage == "pt":
        return to_text(row, spec, ref)
    if stage in PAIRWISE_STAGES:
        return to_preference_pair(row, spec, ref)
    if stage == "kto":
        return to_kto_example(row, spec, ref)
    return to_conversation(row, spec, ref)


def _prompt_messages(item) -> list[dict[str, str]]:
    if isinstance(item, PreferencePair):
        return item.prompt
    if isinstance(item, KtoExample):
        return item.conversation.messages
    return item.messages


def _load_raw(names: str, data_args, stage: str, seed: int = 42) -> list[tuple[Any, Any]]:
    """Read and normalise every row (str for pt, PreferencePair for dpo/rm, KtoExample for kto,
    Conversation for sft), then mix the datasets by `mix_strategy`."""
    sources = []
    for spec in load_dataset_specs(names, data_args.dataset_dir):
        _check_layout(spec, stage)
        items = []
        count = 0
        for ref, row in read_rows(spec.path):
            if data_args.max_samples is not None and count >= data_args.max_samples:
                break
            item = _convert(row, spec, ref, stage)
            messages = None if stage == "pt" else _prompt_messages(item)
            if messages is not None and data_args.default_system and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": data_args.default_system})
            items.append((ref, item))
            count += 1
        if count == 0:
            raise DataError(f"{spec.path}: dataset {spec.name!r} has no rows")
        sources.append(items)
    try:
        probabilities = parse_probabilities(data_args.interleave_probs, len(sources))
    except ValueError as err:
        raise DataError(str(err)) from None
    mixed = mix(sources, data_args.mix_strategy, probabilities, seed)
    if len(sources) > 1:
        logger.info(
            "%s of %s rows -> %d rows",
            data_args.mix_strategy,
            "+".join(str(len(x)) for x in sources),
            len(mixed),
        )
    return mixed


def _split(items: list, val_size: float, seed: int) -> tuple[list, list]:
    if not val_size:
        return items, []
    count = int(val_size) if val_size >= 1 else max(1, round(len(items) * val_size))
    if count >= len(items):
        raise DataError(f"val_size={val_size} leaves no training rows out of {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _tokenize_chat(items, tokenizer, template: str, data_args, desc: str) -> list[Document]:
    documents = []
    for _, conversation in tqdm(items, desc=desc, disable=len(items) < 2000, leave=False):
        input_ids, labels = encode_conversation(
            tokenizer,
            template,
            conversation,
            data_args.cutoff_len,
            train_on_prompt=data_args.train_on_prompt,
            mask_history=data_args.mask_history,
        )
        documents.append(shifted(input_ids, labels))
    return documents


def _tokenize_text(items, tokenizer, data_args, packing: bool, desc: str) -> list[Document]:
    eos = tokenizer.eos_token_id
    texts = [text for _, text in items]
    encoded = [
        tokenizer.encode(text, add_special_tokens=True) + ([eos] if eos is not None else [])
        for text in tqdm(texts, desc=desc, disable=len(texts) < 2000, leave=False)
    ]
    if packing and not data_args.neat_packing:
        stream = [token for ids in encoded for token in ids]
        rows = chunk_stream(stream, data_args.cutoff_len)
        if not rows:
            raise DataError(
                f"pretraining data has {len(stream)} tokens, fewer than one cutoff_len={data_args.cutoff_len} "
                "block; lower cutoff_len or add data"
            )
        return rows
    documents = []
    for ids in encoded:
        # A document longer than a row becomes several windows so no text is dropped.
        for start in range(0, len(ids), data_args.cutoff_len):
            window = ids[start : start + data_args.cutoff_len]
            if len(window) > 1:
                documents.append(shifted(window, window))
    return documents


def _tokenize_preference(items, tokenizer, template: str, data_args, stage: str, desc: str) -> list[dict]:
    if stage == "kto":
        examples = [example for _, example in items]
        rows = encode_kto(tokenizer, template, examples, data_args.cutoff_len)
        desirable = sum(example.desirable for example in examples)
        logger.info("%d KTO rows: %d desirable, %d undesirable", len(rows), desirable, len(rows) - desirable)
        return rows
    rows = [
        encode_pair(tokenizer, template, pair, data_args.cutoff_len)
        for _, pair in tqdm(items, desc=desc, disable=len(items) < 2000, leave=False)
    ]
    logger.info("%d preference pairs", len(rows))
    return rows


def _finish(documents: list[Document], data_args, packing: bool, stage: str) -> TokenizedDataset:
    if packing and (stage != "pt" or data_args.neat_packing):
        documents = pack_documents(documents, data_args.cutoff_len, isolate=data_args.neat_packing)
    trained = sum(sum(1 for x in d["shift_labels"] if x != IGNORE_INDEX) for d in documents)
    tokens = sum(len(d["input_ids"]) for d in documents)
    logger.info("%d rows, %d tokens, %d trained tokens", len(documents), tokens, trained)
    return TokenizedDataset(documents)


def _sample_conversation(item) -> Conversation:
    if isinstance(item, PreferencePair):
        return item.conversation(item.chosen)
    if isinstance(item, KtoExample):
        return item.conversation
    return item


def build_datasets(data_args, tokenizer, stage: str, seed: int = 42) -> DatasetBundle:
    """Load, normalise, tokenize, split and pack the configured datasets."""
    packing = data_args.packing if data_args.packing is not None else stage == "pt"
    packing = packing or data_args.neat_packing
    template = None if stage == "pt" else resolve_chat_template(tokenizer, data_args.template)
    train_items = _load_raw(data_args.dataset, data_args, stage, seed) if data_args.dataset else []
    eval_items = _load_raw(data_args.eval_dataset, data_args, stage, seed) if data_args.eval_dataset else []
    if data_args.val_size:
        if eval_items:
            raise DataError("val_size and eval_dataset are both set; keep one")
        train_items, eval_items = _split(train_items, data_args.val_size, seed)

    def tokenize(items, desc):
        if not items:
            return None
        if stage == "pt":
            docs = _tokenize_text(items, tokenizer, data_args, packing, desc)
        elif stage in (*PAIRWISE_STAGES, "kto"):
            return TokenizedDataset(_tokenize_preference(items, tokenizer, template, data_args, stage, desc))
        else:
            docs = _tokenize_chat(items, tokenizer, template, data_args, desc)
        return _finish(docs, data_args, packing, stage)

    samples = (
        [_sample_conversation(item) for _, item in (eval_items or train_items)[:3]] if stage != "pt" else []
    )
    return DatasetBundle(
        tokenize(train_items, "tokenizing train"), tokenize(eval_items, "tokenizing eval"), samples
    )

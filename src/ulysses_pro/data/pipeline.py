"""dataset names -> tokenized, split and (optionally) packed torch datasets."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from typing import Any

from torch.utils.data import Dataset

from .cache import cache_exists, fingerprint, load_cache, save_cache
from .chat_format import ChatFormat
from .columns import ColumnarRows
from .encoding import EncodeSettings, documents_of, encode_all, to_document
from .errors import DataError, RowRef, SkippedRows
from .formats import Conversation, to_conversation, to_prompt, to_text
from .mixing import mix, mix_stream, parse_probabilities
from .multimodal.rows import MediaTable, attach_media, vision_settings, with_media_columns
from .packing import Document, PackingReport, pack_documents, report
from .preference import KtoExample, PreferencePair, pair_kto, to_kto_example, to_preference_pair
from .registry import load_dataset_specs
from .sources import check_source, spec_rows
from .streaming import StreamingDataset, StreamSettings
from .templates import chat_format, pretrain_eos

logger = logging.getLogger(__name__)


class TokenizedDataset(Dataset):
    """Rows of token ids, held column-wise (`ColumnarRows`), and for token stages what packing cost."""

    def __init__(self, rows: list[Document] | ColumnarRows, packing_report: PackingReport | None = None):
        # Images and videos are objects, not token ids: the store holds their indices in one table.
        self.media = None
        if not isinstance(rows, ColumnarRows):
            self.media, rows = MediaTable.detach(rows)
        self.store = rows if isinstance(rows, ColumnarRows) else ColumnarRows.from_rows(rows)
        self.packing_report = packing_report

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> Document:
        row = self.store[index]
        return self.media.attach(row) if self.media else row

    @property
    def rows(self) -> list[Document]:
        """Every row as lists (for inspection and tests; training reads rows one at a time)."""
        return [self.store[i] for i in range(len(self.store))]

    def row_lengths(self) -> list[int]:
        """Tokens each row puts in a batch (all of a pair's or KTO row's sequences)."""
        keys = [k for k, kind in self.store.kinds.items() if kind == "list" and k.endswith("input_ids")]
        per_key = [self.store.lengths(k) for k in keys]
        return [sum(parts) for parts in zip(*per_key)]


@dataclass
class DatasetBundle:
    """What a stage trains and evaluates on, plus a few prompts to show generations for."""

    train: TokenizedDataset | StreamingDataset | None
    eval: TokenizedDataset | None
    sample_prompts: list[Conversation]
    template: ChatFormat | None = None  # how the sample prompts are written for generation


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


def check_sources(data_args, stage: str) -> None:
    """Dataset names, their entries, the stage's layout and the files, without reading a row."""
    for names in (data_args.dataset, data_args.eval_dataset):
        for spec in load_dataset_specs(names, data_args.dataset_dir) if names else []:
            _check_layout(spec, stage)
            check_source(spec)


def _convert(row, spec, ref, stage: str):
    if stage == "pt":
        return to_text(row, spec, ref)
    if stage in PAIRWISE_STAGES:
        return to_preference_pair(row, spec, ref)
    if stage == "kto":
        return to_kto_example(row, spec, ref)
    if stage == "grpo":
        return to_prompt(row, spec, ref)
    return to_conversation(row, spec, ref)


def _prompt_messages(item) -> list[dict[str, str]]:
    if isinstance(item, PreferencePair):
        return item.prompt
    if isinstance(item, KtoExample):
        return item.conversation.messages
    return item.messages


def _rows_of(spec, data_args, stage: str, skipped: SkippedRows, seed: int) -> Iterator[tuple[RowRef, Any]]:
    """One dataset's normalised rows, read lazily, at most `max_samples` of them."""
    count = 0
    # Hub access uses the usual Hugging Face settings (HF_TOKEN, HF_DATASETS_CACHE, HF_HUB_OFFLINE).
    rows = spec_rows(spec, seed=seed, streaming=data_args.streaming)
    for ref, row in rows:
        if data_args.max_samples is not None and count >= data_args.max_samples:
            return
        try:
            item = attach_media(_convert(row, spec, ref, stage), row, spec, data_args, ref, stage)
        except DataError as err:
            if not data_args.skip_invalid_rows:
                raise
            skipped.add(str(err))
            continue
        messages = None if stage == "pt" else _prompt_messages(item)
        if messages is not None and data_args.default_system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": data_args.default_system})
        count += 1
        yield ref, item
    if count == 0:
        raise DataError(f"{spec.path}: dataset {spec.name!r} has no {'valid ' if skipped.count else ''}rows")


def _sources(
    names: str, data_args, stage: str, skipped: SkippedRows, seed: int = 42
) -> list[Callable[[], Iterator]]:
    """Per dataset, a factory of fresh row iterators (mixing may start a dataset over)."""
    specs = load_dataset_specs(names, data_args.dataset_dir)
    for spec in specs:
        _check_layout(spec, stage)
    return [partial(_rows_of, spec, data_args, stage, skipped, seed) for spec in specs]


def _probabilities(data_args, count: int) -> list[float]:
    try:
        return parse_probabilities(data_args.interleave_probs, count)
    except ValueError as err:
        raise DataError(str(err)) from None


def _load_raw(
    names: str, data_args, stage: str, skipped: SkippedRows, seed: int = 42
) -> list[tuple[Any, Any]]:
    """Read and normalise every row (str for pt, PreferencePair for dpo/rm, KtoExample for kto,
    Conversation for sft), then mix the datasets by `mix_strategy`."""
    sources = [list(open_source()) for open_source in _sources(names, data_args, stage, skipped, seed)]
    mixed = mix(sources, data_args.mix_strategy, _probabilities(data_args, len(sources)), seed)
    if len(sources) > 1:
        logger.info(
            "%s of %s rows -> %d rows",
            data_args.mix_strategy,
            "+".join(str(len(x)) for x in sources),
            len(mixed),
        )
    return mixed


def load_rows(data_args, stage: str, seed: int = 42) -> list[tuple[RowRef, Any]]:
    """The training datasets' rows, normalised for `stage` and mixed, not yet tokenized."""
    skipped = SkippedRows()
    rows = _load_raw(data_args.dataset, data_args, stage, skipped, seed)
    skipped.log()
    return rows


def split_held_out(items: list, val_size: float, seed: int) -> tuple[list, list]:
    """Hold out `val_size` rows (a fraction in (0, 1), or a count >= 1) chosen by a seeded shuffle."""
    if not val_size:
        return items, []
    count = int(val_size) if val_size >= 1 else max(1, round(len(items) * val_size))
    if count >= len(items):
        raise DataError(f"val_size={val_size} leaves no training rows out of {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _tokenize(
    items: list[tuple[RowRef, Any]],
    tokenizer,
    settings: EncodeSettings,
    data_args,
    packing: bool,
    skipped: SkippedRows,
    desc: str,
) -> TokenizedDataset | None:
    if not items:
        return None
    encoded = encode_all(
        [item for _, item in items],
        tokenizer,
        settings,
        workers=data_args.preprocessing_num_workers,
        batch_size=data_args.preprocessing_batch_size,
        desc=desc,
    )
    kept = []
    for (_, item), result in zip(items, encoded):
        if result.error is not None:
            skipped.add(result.error)
        else:
            kept.append((item, result))
    if not kept:
        raise DataError(
            f"{desc}: every row was invalid and skipped ({skipped.count}); see the warnings above"
        )
    stage = settings.stage
    if stage == "kto":
        pairs = pair_kto([item for item, _ in kept], [r.outputs[0] for _, r in kept], settings.cutoff_len)
        rows = [to_document(row) for row in pairs]
        desirable = sum(item.desirable for item, _ in kept)
        logger.info(
            "%s: %d KTO rows (%d desirable, %d undesirable), %s",
            desc,
            len(rows),
            desirable,
            len(rows) - desirable,
            _cut_share(kept, settings.cutoff_len),
        )
        return TokenizedDataset(rows)
    if stage in PAIRWISE_STAGES:
        logger.info("%s: %d preference pairs, %s", desc, len(kept), _cut_share(kept, settings.cutoff_len))
        return TokenizedDataset(with_media_columns([r.outputs[0] for _, r in kept]))
    documents, cut = documents_of([r for _, r in kept])
    documents = with_media_columns(documents)
    rows = (
        pack_documents(documents, settings.cutoff_len, isolate=isolates_documents(data_args, settings.stage))
        if packing
        else documents
    )
    packing_report = report(rows, settings.cutoff_len, documents=len(kept), cut_documents=cut)
    logger.info("%s: %s", desc, packing_report.describe())
    return TokenizedDataset(rows, packing_report)


def _cut_share(kept: list, cutoff_len: int) -> str:
    cut = sum(result.cut for _, result in kept)
    return f"{cut} ({100 * cut / max(1, len(kept)):.1f}%) cut to cutoff_len={cutoff_len}"


def isolates_documents(data_args, stage: str) -> bool:
    """Whether packed documents are kept from attending to each other: always for chat stages (an
    answer must not depend on an unrelated conversation), with neat_packing for pretraining."""
    return data_args.neat_packing or stage != "pt"


def _sample_conversation(item) -> Conversation:
    if isinstance(item, PreferencePair):
        return item.conversation(item.chosen)
    if isinstance(item, KtoExample):
        return item.conversation
    return item


def _is_main_process() -> bool:
    # Data is built before torch.distributed starts; torchrun's RANK says who writes shared files.
    return os.environ.get("RANK", "0") == "0"


def _build_streaming(
    data_args, tokenizer, settings: EncodeSettings, packing: bool, seed: int
) -> DatasetBundle:
    """Train rows as a `StreamingDataset`; the `val_size` rows at the head of the stream (or
    `eval_dataset`) are held in memory for evaluation."""
    stage = settings.stage
    sources = _sources(data_args.dataset, data_args, stage, SkippedRows(live=True), seed)
    probabilities = _probabilities(data_args, len(sources))
    held = int(data_args.val_size)
    head = list(islice(mix_stream(sources, data_args.mix_strategy, probabilities, seed), max(held, 3)))
    eval_items = head[:held]
    if data_args.eval_dataset:
        eval_items = _load_raw(data_args.eval_dataset, data_args, stage, SkippedRows(), seed)
    skipped = SkippedRows()
    evaluation = _tokenize(eval_items, tokenizer, settings, data_args, packing, skipped, "eval")
    skipped.log()
    stream = StreamSettings(
        probabilities=probabilities,
        strategy=data_args.mix_strategy,
        seed=seed,
        buffer_size=data_args.buffer_size,
        skip=held,
        packing=packing,
        isolate=isolates_documents(data_args, stage),
    )
    logger.info(
        "streaming %s: shuffle buffer %d rows, %d rows held out for evaluation",
        data_args.dataset,
        data_args.buffer_size,
        held,
    )
    samples = [_sample_conversation(item) for _, item in (eval_items or head)[:3]] if stage != "pt" else []
    return DatasetBundle(StreamingDataset(sources, tokenizer, settings, stream), evaluation, samples)


def _warn_if_tools_are_dropped(items: list, tokenizer, template) -> None:
    with_tools = sum(1 for _, item in items if getattr(_sample_conversation(item), "tools", None))
    if with_tools and template is not None and not template.renders_tools(tokenizer):
        logger.warning(
            "%d rows carry a tools column but the chat template does not render tools, so the model will not "
            "see the tool definitions; use a template that renders `tools` (the model's own, e.g. qwen)",
            with_tools,
        )


def _load_cached(cache: str, built_from: dict) -> DatasetBundle:
    splits, samples = load_cache(cache, built_from)
    logger.info(
        "tokenized data loaded from %s: %s",
        cache,
        ", ".join(f"{k} {len(v)} rows" for k, v in splits.items() if v),
    )
    return DatasetBundle(
        *(TokenizedDataset(splits[name]) if splits[name] else None for name in ("train", "eval")),
        [Conversation(s["messages"], RowRef(s["file"], s["row"]), s["tools"]) for s in samples],
    )


def _save_cached(cache: str, bundle: DatasetBundle, built_from: dict) -> None:
    save_cache(
        cache,
        {
            name: split.store if split else None
            for name, split in (("train", bundle.train), ("eval", bundle.eval))
        },
        [
            {"messages": c.messages, "tools": c.tools, "file": c.ref.file, "row": c.ref.index}
            for c in bundle.sample_prompts
        ],
        built_from,
    )
    logger.info("tokenized data saved to %s", cache)


def encode_settings(data_args, tokenizer, stage: str) -> EncodeSettings:
    """How rows of this run become ids. A named template fixes the tokenizer (eos, pad, stop
    words) first, as LLaMA-Factory does, for pretraining too: it decides the appended eos."""
    template = chat_format(tokenizer, data_args)
    return EncodeSettings(
        stage=stage,
        template=None if stage == "pt" else template,
        cutoff_len=data_args.cutoff_len,
        train_on_prompt=data_args.train_on_prompt,
        mask_history=data_args.mask_history,
        skip_invalid_rows=data_args.skip_invalid_rows,
        pretrain_eos=pretrain_eos(tokenizer, data_args.template),
        vision=vision_settings(data_args, tokenizer),
    )


def build_datasets(data_args, tokenizer, stage: str, seed: int = 42) -> DatasetBundle:
    """Load, normalise, tokenize, split and pack the configured datasets (or reload them from
    `tokenized_path`)."""
    packing = data_args.packing if data_args.packing is not None else stage == "pt"
    packing = (packing or data_args.neat_packing) and stage in ("pt", "sft")
    settings = encode_settings(data_args, tokenizer, stage)
    template = settings.template
    if data_args.streaming:
        return replace(_build_streaming(data_args, tokenizer, settings, packing, seed), template=template)
    cache = data_args.tokenized_path
    built_from = fingerprint(data_args, tokenizer, stage, seed) if cache else None
    if cache and cache_exists(cache) and not data_args.overwrite_cache:
        return replace(_load_cached(cache, built_from), template=template)
    skipped = SkippedRows()
    train_items = _load_raw(data_args.dataset, data_args, stage, skipped, seed) if data_args.dataset else []
    eval_items = (
        _load_raw(data_args.eval_dataset, data_args, stage, skipped, seed) if data_args.eval_dataset else []
    )
    _warn_if_tools_are_dropped(train_items + eval_items, tokenizer, template)
    if data_args.val_size:
        if eval_items:
            raise DataError("val_size and eval_dataset are both set; keep one")
        train_items, eval_items = split_held_out(train_items, data_args.val_size, seed)
    train, evaluation = (
        _tokenize(items, tokenizer, settings, data_args, packing, skipped, desc)
        for items, desc in ((train_items, "train"), (eval_items, "eval"))
    )
    skipped.log()
    samples = (
        [_sample_conversation(item) for _, item in (eval_items or train_items)[:3]] if stage != "pt" else []
    )
    bundle = DatasetBundle(train, evaluation, samples, template)
    if cache and _is_main_process():
        _save_cached(cache, bundle, built_from)
    return bundle

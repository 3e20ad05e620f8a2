"""`ulysses-pro preview CONFIG.yaml [key=value ...] [--rows N] [--jsonl OUT]`: the first rows of the
training set as the model will see them, without loading weights.

Each row is printed decoded, with the trained spans marked (green on a terminal, `⟦...⟧` otherwise).
`--jsonl` writes one JSON object per row in LLaMA-Factory's convention: `input_ids` and `labels` of
the same length, unshifted, -100 where masked (`chosen_*` / `rejected_*` for pairs; `kl_*` and
`kto_tag` for KTO, whose mismatched answers pair the previewed rows among themselves).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from ..config import load_config
from ..data.encoding import SEQUENCE_PREFIXES, encode_item, llamafactory_rows
from ..data.pipeline import encode_settings, load_rows
from ..data.preference import pair_kto
from ..models.loader import load_tokenizer
from ..parallel.reduce import IGNORE_INDEX

GREEN, RESET = "\033[32m", "\033[0m"


def marked_text(tokenizer, input_ids: list[int], labels: list[int], color: bool) -> str:
    """The decoded sequence with each run of trained tokens wrapped in a marker."""
    opening, closing = (GREEN, RESET) if color else ("⟦", "⟧")
    pieces, run, trained = [], [], False
    for token, label in zip(input_ids, labels):
        if (label != IGNORE_INDEX) != trained and run:
            text = tokenizer.decode(run)
            pieces.append(f"{opening}{text}{closing}" if trained else text)
            run = []
        trained = label != IGNORE_INDEX
        run.append(token)
    if run:
        text = tokenizer.decode(run)
        pieces.append(f"{opening}{text}{closing}" if trained else text)
    return "".join(pieces)


def preview_rows(config, count: int) -> tuple[object, list[tuple[object, dict]]]:
    """(tokenizer, [(row ref, LLaMA-Factory row)]) for the first `count` training rows."""
    tokenizer = load_tokenizer(config.model)
    stage = config.finetuning.stage
    data_args = dataclasses.replace(
        config.data, max_samples=min(count, config.data.max_samples or count), streaming=False
    )
    settings = encode_settings(data_args, tokenizer, stage)
    items = load_rows(data_args, stage, config.training.seed)[:count]
    if stage == "kto":
        pieces = [encode_item(tokenizer, settings, item).outputs[0] for _, item in items]
        rows = pair_kto([item for _, item in items], pieces, settings.cutoff_len)
        return tokenizer, [(ref, row) for (ref, _), row in zip(items, rows)]
    out = []
    for ref, item in items:
        for row in llamafactory_rows(tokenizer, settings, item)[0]:
            out.append((ref, row))
    return tokenizer, out[:count]


# A placeholder's visual tokens are hundreds of one repeated token: shown as one, with its count.
_VISUAL_RUN = re.compile(r"(<\|(?:image|video)_pad\|>)(?:\1)+")


def _folded(text: str) -> str:
    return _VISUAL_RUN.sub(lambda m: f"{m.group(1)} x {len(m.group(0)) // len(m.group(1))}", text)


def describe(tokenizer, ref, row: dict, color: bool) -> str:
    lines = [f"── {ref}"]
    for prefix in SEQUENCE_PREFIXES:
        if prefix + "input_ids" not in row:
            continue
        ids, labels = row[prefix + "input_ids"], row[prefix + "labels"]
        trained = sum(label != IGNORE_INDEX for label in labels)
        name = {"": "sequence", "kl_": "mismatched (KL)"}.get(prefix, prefix.rstrip("_"))
        text = marked_text(tokenizer, ids, labels, color)
        visual = {kind: text.count(f"<|{kind}_pad|>") for kind in ("image", "video")}
        shown = ", ".join(f"{count} {kind}" for kind, count in visual.items() if count)
        lines.append(f"{name}: {len(ids)} tokens, {trained} trained" + (f", visual: {shown}" if shown else ""))
        lines.append(_folded(text))
    if "kto_tag" in row:
        lines.append(f"kto_tag: {row['kto_tag']}")
    return "\n".join(lines)


def run(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ulysses-pro preview", description="Show the first training rows as the model will see them."
    )
    parser.add_argument("--rows", type=int, default=3, help="how many rows (default 3)")
    parser.add_argument("--jsonl", help="also write the rows, LLaMA-Factory's convention, to this file")
    options, config_arguments = parser.parse_known_args(arguments)
    config = load_config(None, config_arguments)
    tokenizer, rows = preview_rows(config, max(1, options.rows))
    color = sys.stdout.isatty()
    for ref, row in rows:
        print(describe(tokenizer, ref, row, color) + "\n")
    if options.jsonl:
        path = Path(options.jsonl)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for _, row in rows:
                out.write(json.dumps(row) + "\n")
        print(f"{len(rows)} rows written to {path}")
    return 0

"""Batching: right-pad rows to a common length."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .templates import IGNORE_INDEX


@dataclass
class PaddingCollator:
    """Pad `input_ids`, `shift_labels` and positions; mask padding.

    Packed rows carry `position_ids` and get no attention mask: transformers derives the
    per-document causal mask from positions that restart at 0. Unpacked rows get a 0/1 attention
    mask. The padding tail's positions continue the row's last document: padding comes last and
    has no target, so under causal attention no real token sees it, and a padded row stays one
    attention problem (one kernel call under sequence parallelism, which drops the mask).
    """

    pad_token_id: int
    pad_to_multiple_of: int = 1
    # Also emit `document_lengths`: per token, the length of its document (0 on padding), for NEFTune.
    document_lengths: bool = False

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in rows[0]
        input_ids, labels, positions, mask, lengths = [], [], [], [], []
        for row in rows:
            length = len(row["input_ids"])
            pad = width - length
            input_ids.append(row["input_ids"] + [self.pad_token_id] * pad)
            labels.append(row["shift_labels"] + [IGNORE_INDEX] * pad)
            if self.document_lengths:
                documents = row.get("document_lengths") or [length]
                lengths.append([size for size in documents for _ in range(size)] + [0] * pad)
            if packed:
                last = row["position_ids"][-1]
                positions.append(row["position_ids"] + list(range(last + 1, last + 1 + pad)))
            else:
                positions.append(list(range(width)))
                mask.append([1] * length + [0] * pad)
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "shift_labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }
        if not packed:
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        if self.document_lengths:
            batch["document_lengths"] = torch.tensor(lengths, dtype=torch.long)
        return batch


def _documents(rows: list[dict], prefix: str) -> list[dict[str, list[int]]]:
    return [
        {"input_ids": row[f"{prefix}input_ids"], "shift_labels": row[f"{prefix}shift_labels"]} for row in rows
    ]


def _last_token_mask(batch: dict[str, torch.Tensor], rows: list[dict[str, list[int]]]) -> torch.Tensor:
    """1 at each row's last real token (where a reward model reads its score), 0 elsewhere."""
    mask = torch.zeros_like(batch["input_ids"])
    for index, row in enumerate(rows):
        mask[index, len(row["input_ids"]) - 1] = 1
    return mask


@dataclass
class PairwiseCollator:
    """Preference pairs -> one batch of 2b rows: the b chosen answers, then the b rejected ones.

    One forward then scores both sides (and, under SP, both are split the same way).
    """

    pad_token_id: int
    document_lengths: bool = False

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        documents = _documents(rows, "chosen_") + _documents(rows, "rejected_")
        batch = PaddingCollator(self.pad_token_id, document_lengths=self.document_lengths)(documents)
        batch["last_token_mask"] = _last_token_mask(batch, documents)
        return batch


@dataclass
class KtoCollator:
    """KTO rows -> 2b rows (the b labelled answers, then the b mismatched KL answers) and b labels."""

    pad_token_id: int
    document_lengths: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rows_and_kl = _documents(rows, "") + _documents(rows, "kl_")
        batch = PaddingCollator(self.pad_token_id, document_lengths=self.document_lengths)(rows_and_kl)
        batch["kto_labels"] = torch.tensor([row["kto_label"] for row in rows], dtype=torch.bool)
        return batch

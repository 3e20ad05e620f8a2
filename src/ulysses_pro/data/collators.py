"""Batching: right-pad rows to a common length."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .templates import IGNORE_INDEX


@dataclass
class PaddingCollator:
    """Pad `input_ids`, `shift_labels` and positions; mask padding.

    Packed rows carry `position_ids` and get no attention mask: transformers derives the
    per-document causal mask from positions that restart at 0. The padding tail restarts at 0 too,
    so it forms its own segment and never leaks into a real document. Unpacked rows get a 0/1
    attention mask instead.
    """

    pad_token_id: int
    pad_to_multiple_of: int = 1

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in rows[0]
        input_ids, labels, positions, mask = [], [], [], []
        for row in rows:
            length = len(row["input_ids"])
            pad = width - length
            input_ids.append(row["input_ids"] + [self.pad_token_id] * pad)
            labels.append(row["shift_labels"] + [IGNORE_INDEX] * pad)
            if packed:
                positions.append(row["position_ids"] + list(range(pad)))
            else:
                positions.append(list(range(length)) + [0] * pad)
                mask.append([1] * length + [0] * pad)
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "shift_labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }
        if not packed:
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        return batch

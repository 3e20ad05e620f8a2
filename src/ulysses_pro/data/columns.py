"""Token rows stored column-wise: one flat int32 tensor per field plus row offsets.

A Python list spends about 36 bytes per token id (an 8-byte pointer plus a 28-byte int object,
less for small ints that CPython caches); a flat int32 tensor spends 4. Rows are rebuilt as lists
only when the data loader asks for one. The same columns are what `tokenized_path` saves.
"""

from __future__ import annotations

import torch

LIST = "list"


class ColumnarRows:
    """A read-only sequence of rows (dicts of int lists, ints or bools) held in flat tensors."""

    def __init__(self, columns: dict[str, torch.Tensor], kinds: dict[str, str], count: int):
        # `kinds[key]` is "list" (with `columns[key + ".offsets"]`), "int" or "bool".
        self.columns, self.kinds, self.count = columns, kinds, count

    @classmethod
    def from_rows(cls, rows: list[dict]) -> ColumnarRows:
        columns: dict[str, torch.Tensor] = {}
        kinds: dict[str, str] = {}
        for key in rows[0] if rows else ():
            values = [row[key] for row in rows]
            if isinstance(values[0], list):
                lengths = torch.tensor([len(v) for v in values], dtype=torch.int64)
                columns[key] = torch.tensor([x for v in values for x in v], dtype=torch.int32)
                columns[f"{key}.offsets"] = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
                kinds[key] = LIST
            else:
                columns[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
                kinds[key] = type(values[0]).__name__
        return cls(columns, kinds, len(rows))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        if not -self.count <= index < self.count:
            raise IndexError(index)
        index %= self.count
        row = {}
        for key, kind in self.kinds.items():
            if kind == LIST:
                offsets = self.columns[f"{key}.offsets"]
                row[key] = self.columns[key][offsets[index] : offsets[index + 1]].tolist()
            else:
                value = int(self.columns[key][index])
                row[key] = bool(value) if kind == "bool" else value
        return row

    def lengths(self, key: str = "input_ids") -> list[int]:
        """Per-row length of a list field, without rebuilding the rows."""
        return self.columns[f"{key}.offsets"].diff().tolist()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.columns.values())

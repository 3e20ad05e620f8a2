"""The one error type of the data layer: it always names the file, the row and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RowRef:
    """Where a row came from, for error messages."""

    file: str
    index: int

    def __str__(self) -> str:
        return f"{self.file} row {self.index}"


class DataError(ValueError):
    """Malformed data; the message starts with `file row N` (or `file:line`)."""

    @classmethod
    def at(cls, row: RowRef, message: str) -> DataError:
        return cls(f"{row}: {message}")

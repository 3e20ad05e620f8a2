"""The one error type of the data layer: it always names the file, the row and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RowRef:
    """Where a row came from, for error messages."""

    file: str
    index: int
    line: int | None = None  # where the row starts in the file, when known

    def __str__(self) -> str:
        # `file:line:` first, so editors and terminals can jump to it.
        return f"{self.file}:{self.line}: row {self.index}" if self.line else f"{self.file} row {self.index}"


class DataError(ValueError):
    """Malformed data; the message starts with `file:line: row N`, `file row N` or `file:line:col`."""

    @classmethod
    def at(cls, row: RowRef, message: str) -> DataError:
        return cls(f"{row}: {message}")

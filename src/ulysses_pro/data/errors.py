"""The one error type of the data layer (it always names the file, the row and what was expected), and
the tally of rows skipped instead under `skip_invalid_rows`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


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


@dataclass
class SkippedRows:
    """Rows dropped under `skip_invalid_rows`: counted, the first few kept for the log."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    live: bool = False  # streaming has no end to log at: log each skip as it happens

    def add(self, message: str) -> None:
        self.count += 1
        if self.live:
            logger.warning("skip_invalid_rows: skipped %s (%d so far)", message, self.count)
        if len(self.examples) < 5:
            self.examples.append(message)

    def log(self) -> None:
        if self.count:
            logger.warning(
                "skip_invalid_rows: skipped %d invalid row(s); the first:\n  %s",
                self.count,
                "\n  ".join(self.examples),
            )

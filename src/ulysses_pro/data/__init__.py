"""Rows -> token ids; knows nothing of sequence parallelism beyond padding to a multiple."""

from .errors import DataError, RowRef

__all__ = ["DataError", "RowRef"]

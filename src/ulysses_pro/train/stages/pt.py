"""Pretraining stage: next-token loss on every token of packed text."""

from __future__ import annotations

from ...config import RunConfig
from ..workflow import run_token_stage


def run_pt(config: RunConfig, callbacks: list | None = None):
    """Continue pretraining on `{"text": ...}` rows."""
    return run_token_stage(config, callbacks)

"""Supervised fine-tuning stage: loss on assistant turns only (unless train_on_prompt)."""

from __future__ import annotations

from ...config import RunConfig
from ..workflow import run_token_stage


def run_sft(config: RunConfig, callbacks: list | None = None):
    """Fine-tune on alpaca / sharegpt conversations."""
    return run_token_stage(config, callbacks)

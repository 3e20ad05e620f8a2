"""One small workflow per stage; `run_stage` dispatches on `stage`."""

from __future__ import annotations

from ...config import RunConfig


def run_stage(config: RunConfig):
    """Run the configured stage (config validation already refused the unavailable ones)."""
    stage = config.finetuning.stage
    if stage == "pt":
        from .pt import run_pt

        return run_pt(config)
    if stage == "sft":
        from .sft import run_sft

        return run_sft(config)
    raise NotImplementedError(f"stage {stage!r} is not available yet")

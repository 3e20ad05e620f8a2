"""One small workflow per stage; `run_stage` dispatches on `stage`."""

from __future__ import annotations

from ...config import RunConfig


def run_stage(config: RunConfig, callbacks: list | None = None):
    """Run the configured stage (config validation already refused the unavailable ones);
    returns the finished trainer. `callbacks` are extra transformers TrainerCallbacks."""
    stage = config.finetuning.stage
    if stage == "pt":
        from .pt import run_pt

        return run_pt(config, callbacks)
    if stage == "sft":
        from .sft import run_sft

        return run_sft(config, callbacks)
    raise NotImplementedError(f"stage {stage!r} is not available yet")

"""One small workflow per stage; `run_stage` dispatches on `stage`."""

from __future__ import annotations

import importlib

from ...config import RunConfig

_RUNNERS = {
    "pt": ("pt", "run_pt"),
    "sft": ("sft", "run_sft"),
    "dpo": ("dpo", "run_dpo"),
    "kto": ("kto", "run_kto"),
    "rm": ("rm", "run_rm"),
    "ppo": ("ppo", "run_ppo"),
    "grpo": ("grpo", "run_grpo"),
}


def run_stage(config: RunConfig, callbacks: list | None = None):
    """Run the configured stage (config validation already refused the unavailable ones);
    returns the finished trainer. `callbacks` are extra transformers TrainerCallbacks."""
    stage = config.finetuning.stage
    if stage not in _RUNNERS:
        raise NotImplementedError(f"stage {stage!r} is not available yet")
    module, function = _RUNNERS[stage]
    return getattr(importlib.import_module(f".{module}", __name__), function)(config, callbacks)

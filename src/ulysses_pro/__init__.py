"""Ulysses Pro: LLaMA-Factory compatible post-training with exact sequence parallelism."""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "apply_sequence_parallel": "ulysses_pro.models.attention",
    "init_sequence_parallel": "ulysses_pro.parallel",
    "SequenceParallelSampler": "ulysses_pro.parallel",
    "pad_for_sequence_parallel": "ulysses_pro.parallel",
    "split_for_sequence_parallel": "ulysses_pro.parallel",
    "reduce_sequence_parallel_loss": "ulysses_pro.parallel",
    "load_config": "ulysses_pro.config",
    "UlyssesTrainingManager": "ulysses_pro.manager",
}


def __getattr__(name: str):
    # Lazy so `ulysses-pro --help` and config errors do not pay for importing torch/transformers.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ulysses_pro' has no attribute {name!r}")


__all__ = sorted(_LAZY)

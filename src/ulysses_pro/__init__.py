"""Ulysses Pro: LLaMA-Factory compatible post-training with exact sequence parallelism."""

__version__ = "0.1.0"

"""Memory planning from a model's config alone: per-rank peak memory and the longest trainable
sequence for each SP size and memory option, traced on the meta device (`ulysses-pro plan`)."""

from .estimate import Estimate, Options, longest_length, options_of, trace
from .skeleton import Layout

__all__ = ["Estimate", "Layout", "Options", "longest_length", "options_of", "trace"]

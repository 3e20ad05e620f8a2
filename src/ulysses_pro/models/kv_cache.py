"""Switching a model's KV cache on (generation) or off (training) for every config it reads.

A composite config (a vision-language model's) keeps `use_cache` per sub-config, and its language
model reads its own text config's: setting it on the outer config alone leaves the language model
building a cache whenever a call does not say otherwise, and an exported model's text config saying
what training left there.
"""

from __future__ import annotations

from torch import nn


def set_kv_cache(model: nn.Module, enabled: bool) -> None:
    """`use_cache = enabled` on the model's config and on each of its sub-configs."""
    config = model.config
    config.use_cache = enabled
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "use_cache"):
            sub.use_cache = enabled
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    if text is not None and text is not config:
        text.use_cache = enabled

"""Reward functions for runs of an untrained tiny model, whose completions never match a demo answer:
rewards that still differ within a group, so the advantages (and gradients) are not all zero."""

from __future__ import annotations

import os

# When set, each call appends the calling process's global rank to this file (what tests count).
CALL_LOG = "ULYSSES_TEST_REWARD_CALLS"


def distinct_characters(prompts, completions, **columns):
    """The number of distinct characters of each completion, over 10."""
    if os.environ.get(CALL_LOG):
        import torch.distributed as dist

        with open(os.environ[CALL_LOG], "a") as log:
            log.write(f"{dist.get_rank() if dist.is_initialized() else 0}\n")
    return [len(set(completion)) / 10 for completion in completions]

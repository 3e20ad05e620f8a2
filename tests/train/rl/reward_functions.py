"""Reward functions for runs of an untrained tiny model, whose completions never match a demo answer:
rewards that still differ within a group, so the advantages (and gradients) are not all zero."""

from __future__ import annotations


def distinct_characters(prompts, completions, **columns):
    """The number of distinct characters of each completion, over 10."""
    return [len(set(completion)) / 10 for completion in completions]

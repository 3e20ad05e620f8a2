"""Rule rewards for the demo tasks (`data/demo_tasks.json`): verifiable answers, no reward model.

Reward functions receive lists aligned with the completions (prompts, completions, completion_ids,
answer = the row's reference output, and any other column of the row) and return one float each.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z0-9]+")


def exact_answer(prompts, completions, answer, **columns):
    """1 when the completion's words are the reference answer's words, else 0."""
    return [
        float(_WORD.findall(c.lower()) == _WORD.findall((a or "").lower()))
        for c, a in zip(completions, answer)
    ]


def answer_overlap(prompts, completions, answer, **columns):
    """Share of the reference answer's words the completion has in the right place (dense partial credit)."""
    rewards = []
    for completion, reference in zip(completions, answer):
        said, wanted = _WORD.findall(completion.lower()), _WORD.findall((reference or "").lower())
        hits = sum(a == b for a, b in zip(said, wanted))
        rewards.append(hits / max(len(wanted), len(said), 1))
    return rewards

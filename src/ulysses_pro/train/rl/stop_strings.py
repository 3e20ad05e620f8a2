"""Stop strings: where a completion ends when a string (not a token) marks its end.

A stop string counts from the token that completes it, and only once the completion has
`min_new_tokens` tokens (vLLM's `min_tokens` rule: neither stop tokens nor stop strings end a
completion earlier). The token that completes the string stays in the completion (it was sampled,
so it is trained on); the text reward functions read ends before the string, as vLLM and the chat
API return it. The engine's early stop (`completed_by_last_token`) and the final cut
(`cut_at_stop_string`) apply the same rule, so where generation stopped and where the completion
is cut agree.
"""

from __future__ import annotations

from collections.abc import Sequence


def completed_by_last_token(before: str, after: str, stop: Sequence[str]) -> bool:
    """Whether the text grown from `before` to `after` by one token now holds a stop string that it
    did not hold before (one ending inside the new characters)."""
    return any(after.find(s, max(0, len(before) - len(s) + 1)) >= 0 for s in stop)


def cut_at_stop_string(
    ids: Sequence[int], tokenizer, stop: Sequence[str], min_new_tokens: int = 0
) -> tuple[list[int], str] | None:
    """(ids up to the token that completes the first stop string, the text before that string), or
    None when no stop string is completed at or after token `min_new_tokens`."""
    if not stop or not ids:
        return None
    text = tokenizer.decode(ids, skip_special_tokens=True)
    # Characters written by the first min_new_tokens - 1 tokens: a string ending there came too early.
    floor = (
        len(tokenizer.decode(ids[: min_new_tokens - 1], skip_special_tokens=True))
        if min_new_tokens > 1
        else 0
    )
    found = [
        (position + len(s), position)
        for s in stop
        if (position := text.find(s, max(0, floor - len(s) + 1))) >= 0
    ]
    if not found:
        return None
    end, start = min(found)
    # The first token whose prefix text reaches the end of the string (prefix lengths grow with i).
    low, high = 0, len(ids) - 1
    while low < high:
        middle = (low + high) // 2
        if len(tokenizer.decode(ids[: middle + 1], skip_special_tokens=True)) >= end:
            high = middle
        else:
            low = middle + 1
    return list(ids[: low + 1]), text[:start]

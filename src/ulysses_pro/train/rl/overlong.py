"""DAPO's two ways of handling completions that hit the length limit (Yu et al. 2025, "DAPO",
section 3.4), for GRPO:

- overlong filtering (`mask_truncated_completions`, TRL's key): a completion cut by the limit adds
  nothing to the loss. Its reward still counts in its group's advantages, and under the
  `sequence` normalisation it still counts as a completion, as TRL does.
- soft overlong punishment (`overlong_buffer_len`, `overlong_penalty_factor`: verl's
  `overlong_buffer.len` / `penalty_factor`): a reward added to the others, 0 up to
  `limit - buffer` tokens, then falling linearly to `-factor` at the limit (DAPO's eq. 13 with
  L_cache = buffer; verl's `min(-(length - (limit - buffer)) / buffer * factor, 0)`). The limit is
  each completion's own budget, max_new_tokens unless cutoff_len leaves its prompt less room, so a
  completion the cutoff cut is punished as one max_new_tokens cut. Length counts every completion
  token, its stop token included (verl's valid response length).
"""

from __future__ import annotations

from collections.abc import Sequence


def soft_overlong_penalty(
    lengths: Sequence[int], limits: Sequence[int], buffer_len: int, factor: float
) -> list[float]:
    """The punishment of each completion of `lengths` tokens whose limit is `limits`."""
    if buffer_len <= 0:
        return [0.0] * len(lengths)
    return [
        min(-(length - (limit - buffer_len)) / buffer_len * factor, 0.0)
        for length, limit in zip(lengths, limits)
    ]

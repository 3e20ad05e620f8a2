"""Mixing several datasets into one (LLaMA-Factory's `mix_strategy`), seeded and reproducible.

- `concat`: one after another.
- `interleave_under`: each next row comes from a dataset drawn with `interleave_probs`; stops as
  soon as a drawn dataset has no rows left (no row repeats; the mix is undersampled).
- `interleave_over`: as above, but an exhausted dataset starts over; stops once every dataset has
  been used up at least once (small datasets are oversampled).
These are the `first_exhausted` / `all_exhausted` rules of Hugging Face `interleave_datasets`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

Row = TypeVar("Row")


def parse_probabilities(text: str | None, count: int) -> list[float]:
    """`interleave_probs` ("0.5,0.3,0.2") -> normalised weights; uniform when unset."""
    if not text:
        return [1.0 / count] * count
    try:
        weights = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"interleave_probs={text!r}: give comma-separated numbers, one per dataset"
        ) from None
    if len(weights) != count:
        raise ValueError(
            f"interleave_probs has {len(weights)} values for {count} datasets; give one per dataset"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"interleave_probs={text!r}: values must be >= 0 and not all 0")
    total = sum(weights)
    return [w / total for w in weights]


_END = object()


def mix_stream(
    sources: Sequence[Callable[[], Iterator[Row]]], strategy: str, probabilities: list[float], seed: int
) -> Iterator[Row]:
    """Lazily combine datasets given as factories of fresh iterators (see the module docstring).

    Each source is read one row ahead, so an exhausted dataset is noticed as soon as its last row
    has been drawn, exactly as when the lengths are known.
    """
    if strategy == "concat" or len(sources) == 1:
        for open_source in sources:
            yield from open_source()
        return
    oversample = strategy == "interleave_over"
    rng = random.Random(seed)
    iterators = [open_source() for open_source in sources]
    heads = [next(iterator, _END) for iterator in iterators]
    exhausted = [head is _END for head in heads]
    order = range(len(sources))
    while True:
        (index,) = rng.choices(order, weights=probabilities)
        if heads[index] is _END:
            if not oversample:
                return
            iterators[index] = sources[index]()
            heads[index] = next(iterators[index], _END)
            if heads[index] is _END:  # an empty dataset cannot be oversampled
                return
        yield heads[index]
        heads[index] = next(iterators[index], _END)
        if heads[index] is _END:
            exhausted[index] = True
            if oversample and all(exhausted[i] or probabilities[i] == 0 for i in order):
                return


def mix(sources: Sequence[Sequence[Row]], strategy: str, probabilities: list[float], seed: int) -> list[Row]:
    """Combine the datasets' rows according to `strategy` (see the module docstring)."""
    return list(
        mix_stream([lambda source=source: iter(source) for source in sources], strategy, probabilities, seed)
    )

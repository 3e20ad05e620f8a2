"""mix_strategy: concat, interleave_under, interleave_over, with interleave_probs and a seed."""

from __future__ import annotations

from collections import Counter

import pytest

from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.mixing import mix, parse_probabilities
from ulysses_pro.data.pipeline import build_datasets


def sources(*sizes):
    return [[(name, i) for i in range(size)] for name, size in zip("abc", sizes)]


def test_interleave_follows_the_probabilities_within_two_percent():
    mixed = mix(sources(10_000, 10_000, 10_000), "interleave_under", [0.5, 0.3, 0.2], seed=0)
    first = Counter(name for name, _ in mixed[:10_000])
    for name, want in zip("abc", (0.5, 0.3, 0.2)):
        assert abs(first[name] / 10_000 - want) < 0.02, first


def test_under_stops_at_the_first_exhausted_dataset_and_repeats_nothing():
    mixed = mix(sources(50, 1000), "interleave_under", [0.5, 0.5], seed=1)
    assert len(set(mixed)) == len(mixed)
    assert Counter(name for name, _ in mixed)["a"] == 50  # "a" ran out, so the mix ended
    assert len(mixed) < 200


def test_over_uses_every_row_and_repeats_the_small_dataset():
    mixed = mix(sources(50, 1000), "interleave_over", [0.5, 0.5], seed=1)
    assert set(mixed) >= {row for source in sources(50, 1000) for row in source}
    counts = Counter(name for name, _ in mixed)
    assert counts["a"] > 50 and counts["b"] == 1000


def test_seeded_and_reproducible():
    data = sources(300, 300)
    assert mix(data, "interleave_under", [0.5, 0.5], seed=3) == mix(
        data, "interleave_under", [0.5, 0.5], seed=3
    )
    assert mix(data, "interleave_under", [0.5, 0.5], seed=3) != mix(
        data, "interleave_under", [0.5, 0.5], seed=4
    )
    assert mix(data, "concat", [0.5, 0.5], seed=3) == data[0] + data[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [("0.5", "1 values for 2 datasets"), ("a,b", "comma-separated numbers"), ("-1,2", "must be >= 0")],
)
def test_bad_probabilities(text, message):
    with pytest.raises(ValueError, match=message):
        parse_probabilities(text, 2)
    assert parse_probabilities("1,3", 2) == [0.25, 0.75]


def test_pipeline_mixes_named_datasets(write_dataset, tokenizer):
    write_dataset("x", [{"instruction": f"x{i}", "output": "a"} for i in range(40)])
    folder = write_dataset("y", [{"instruction": f"y{i}", "output": "b"} for i in range(10)])

    def rows(**keys):
        args = DataArguments(dataset="x,y", dataset_dir=str(folder), **keys)
        return [tokenizer.decode(r["input_ids"]) for r in build_datasets(args, tokenizer, "sft").train]

    assert len(rows()) == 50
    over = rows(mix_strategy="interleave_over", interleave_probs="0.5,0.5")
    assert len(over) > 50 and sum("y9" in text for text in over) >= 1
    with pytest.raises(DataError, match="interleave_probs has 3 values for 2 datasets"):
        rows(mix_strategy="interleave_under", interleave_probs="0.2,0.3,0.5")

"""Preflight's family checks (models/families.py) refuse by name what SP or packing cannot make
exact, from the config alone, and accept the families measured exact."""

from __future__ import annotations

import pytest

from ulysses_pro.models import families
from ulysses_pro.models.families import packing_problems, sequence_parallel_problems, verified_exact
from ulysses_pro.models.tiny import build_tiny_config


def _config(family: str, **overrides):
    return build_tiny_config(family, 1024, **overrides)


@pytest.fixture
def verifying(monkeypatch):
    """As the sweep measures a family: no measured-exact list required."""
    monkeypatch.setenv(families.VERIFYING_ENV, "1")


def test_measured_families_pass_and_others_are_refused_by_name(monkeypatch):
    monkeypatch.delenv(families.VERIFYING_ENV, raising=False)
    assert sequence_parallel_problems(_config("llama"), 2) == []
    assert "llama" in verified_exact()
    monkeypatch.setattr(families, "verified_exact", lambda: frozenset())
    (problem,) = sequence_parallel_problems(_config("llama"), 2)
    assert "model type llama is not among the families measured exact" in problem


@pytest.mark.parametrize(
    ("family", "words"),
    [
        ("bert", "model type bert is an encoder model"),
        ("bart", "model type bart is the decoder of an encoder-decoder model"),
        ("deepseek_v4", "model type deepseek_v4 uses compressed attention"),
        ("deepseek_v32", "indexed sparse attention"),
        ("rwkv", "RWKV time-mixing recurrence"),
        ("bloom", "model type bloom uses ALiBi"),
    ],
)
def test_mechanisms_sequence_parallelism_does_not_compute_are_named(verifying, family, words):
    problems = sequence_parallel_problems(_config(family), 2)
    assert any(words in problem for problem in problems), problems


def test_a_convolution_no_mechanism_drives_is_found_in_the_module_tree(verifying):
    (problem,) = sequence_parallel_problems(_config("lara_mini"), 2)
    assert "model type lara_mini mixes tokens in LaraMiniGatedDeltaNet layers" in problem
    (leak,) = packing_problems(_config("lara_mini"))
    assert "LaraMiniGatedDeltaNet" in leak and "across document boundaries" in leak
    assert packing_problems(_config("lfm2")) == []  # short convolutions are driven


def test_driven_mixers_pass_and_heads_that_do_not_split_are_refused(verifying):
    assert sequence_parallel_problems(_config("qwen3_next"), 2) == []
    assert packing_problems(_config("qwen3_next")) == []
    # 4 linear-attention value heads cannot split over 8 ranks.
    problems = sequence_parallel_problems(_config("qwen3_next", num_heads=8, num_kv_heads=8), 8)
    assert any("4 linear-attention value heads (linear_num_value_heads)" in p for p in problems), problems
    # Mamba-2: 8 heads split over 4 ranks; 2 groups and 4 ranks divide each other.
    assert sequence_parallel_problems(_config("bamba"), 4) == []
    problems = sequence_parallel_problems(
        _config("bamba", mamba_n_groups=4, mamba_n_heads=16, mamba_d_head=8), 3
    )
    assert any("Mamba groups" in p or "Mamba heads" in p for p in problems), problems


def test_attention_dropout_is_refused_with_the_family_own_key(verifying):
    (problem,) = sequence_parallel_problems(_config("gpt2", attn_pdrop=0.1), 2)
    assert problem.startswith("attn_pdrop: 0.1 in the model's config") and "set attn_pdrop to 0" in problem
    (problem,) = sequence_parallel_problems(_config("llama", attention_dropout=0.1), 2)
    assert problem.startswith("attention_dropout: 0.1")


def test_packing_is_refused_where_the_sweep_measured_a_leak(monkeypatch):
    monkeypatch.setattr(families, "packing_leaks", lambda: {"llama": 0.25})
    (problem,) = packing_problems(_config("llama"))
    assert "model type llama does not restart its positions" in problem and "2.5e-01" in problem

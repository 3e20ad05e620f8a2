"""Recurrent hybrids under SP reproduce one process (contract 8, and contract 10: every mixer, not
only attention): Gated DeltaNet (Qwen3.5, Qwen3-Next, OLMo-hybrid), Mamba-2 (Bamba, Nemotron-H,
Granite-4), Mamba (Jamba), Kimi Delta Attention, LFM2.

Packed rows (neat_packing), GA 2, 4 optimizer steps: losses within 1e-5 relative, gradients within
1e-4. The Qwen3-Next case splits 2 linear-attention key heads over 4 ranks, so each rank receives the
key head its value heads read; the Bamba case splits 2 B/C groups over 4 ranks (each group goes to
the two ranks whose heads read it); the ring cases need the whole sequence back in global order.
"""

from __future__ import annotations

import pytest

from .test_attention_variants import variant_case

QWEN3_5 = "tiny:qwen3_5_text"
QWEN3_NEXT = "tiny:qwen3_next"

CASES = [
    (4, QWEN3_NEXT, 4, "hybrid"),
    (4, "tiny:bamba", 4, "zigzag-ring"),
]

SWEEP = [
    (2, QWEN3_5, 2, "zigzag-ring"),  # by default the family sweep trains it at SP=2 (ulysses)
    (2, QWEN3_5, 2, "ulysses"),
    (2, QWEN3_NEXT, 2, "zigzag-ring"),
    (4, QWEN3_5, 4, "zigzag-ring"),
    (4, QWEN3_5, 2, "ulysses"),  # DP 2 x SP 2
    (4, "tiny:qwen3_5_moe_text", 4, "ulysses"),
    (2, "tiny:bamba", 2, "ulysses"),
    (4, "tiny:nemotron_h", 2, "zigzag-ring"),  # DP 2 x SP 2
    (4, "tiny:granitemoehybrid", 4, "hybrid"),
    (2, "tiny:kimi_linear", 2, "zigzag-ring"),
    (4, "tiny:kimi_linear", 4, "ulysses"),
    (2, "tiny:lfm2", 2, "zigzag-ring"),
    (4, "tiny:lfm2", 4, "hybrid"),
    (4, "tiny:olmo_hybrid", 4, "zigzag-ring"),
    (2, "tiny:jamba", 2, "zigzag-ring"),
    (4, "tiny:jamba", 4, "hybrid"),
    (2, "tiny:falcon_h1", 2, "zigzag-ring"),  # muP multipliers on the projection
    (2, "tiny:falcon_mamba", 2, "ulysses"),  # normalised time step, B and C
    (4, "tiny:zamba2", 2, "zigzag-ring"),  # a transformer block shared by layers; DP 2 x SP 2
]


@pytest.mark.parametrize(("world", "model", "sp", "mode"), CASES)
def test_recurrent_hybrid_matches_single_process(tmp_path, world, model, sp, mode):
    variant_case(tmp_path, world, model, sp, mode)


@pytest.mark.slow
@pytest.mark.parametrize(("world", "model", "sp", "mode"), SWEEP)
def test_recurrent_hybrid_sweep(tmp_path, world, model, sp, mode):
    variant_case(tmp_path, world, model, sp, mode)

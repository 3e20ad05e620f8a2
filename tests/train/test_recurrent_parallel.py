"""Gated DeltaNet hybrids (Qwen3.5, Qwen3-Next) under SP reproduce one process (contract 8, and
contract 10: every mixer, not only attention).

Packed rows (neat_packing), GA 2, 4 optimizer steps: losses within 1e-5 relative, gradients within
1e-4. The hybrid case splits 2 linear-attention key heads over 4 ranks, so each rank receives the key
head its value heads read; the ring cases need the whole sequence back in global order.
"""

from __future__ import annotations

import pytest

from .test_attention_variants import variant_case

QWEN3_5 = "tiny:qwen3_5_text"
QWEN3_NEXT = "tiny:qwen3_next"

CASES = [
    (2, QWEN3_5, 2, "zigzag-ring"),
    (4, QWEN3_NEXT, 4, "hybrid"),
]

SWEEP = [
    (2, QWEN3_5, 2, "ulysses"),
    (2, QWEN3_NEXT, 2, "zigzag-ring"),
    (4, QWEN3_5, 4, "zigzag-ring"),
    (4, QWEN3_5, 2, "ulysses"),  # DP 2 x SP 2
    (4, "tiny:qwen3_5_moe_text", 4, "ulysses"),
]


@pytest.mark.parametrize(("world", "model", "sp", "mode"), CASES)
def test_gated_deltanet_hybrid_matches_single_process(tmp_path, world, model, sp, mode):
    variant_case(tmp_path, world, model, sp, mode)


@pytest.mark.slow
@pytest.mark.parametrize(("world", "model", "sp", "mode"), SWEEP)
def test_gated_deltanet_hybrid_sweep(tmp_path, world, model, sp, mode):
    variant_case(tmp_path, world, model, sp, mode)

"""Sliding windows, Gemma 2's soft-capping, MoE decoders and head counts only `auto` splits, under SP,
reproduce SP=1 (contract 8).

Sequences are far longer than the windows (cutoff_len 96, windows of 16 tokens), so the windows
bite inside every ring block layout; GA 2 in every case. The Gemma 3 model alternates sliding and
full layers, so one forward runs two attention plans.
"""

from __future__ import annotations

import pytest

from ..launcher import run_ranks
from .harness import expected_layout, parallel_keys, run_training
from .test_sequence_parallel import case_keys, compare

MISTRAL = "tiny:mistral?sliding_window=16"
GEMMA3 = "tiny:gemma3?sliding_window=16&sliding_window_pattern=2"  # sliding, full, sliding, ...
GEMMA2 = "tiny:gemma2?sliding_window=16&attn_logit_softcapping=2.0"  # a cap that bites at init
QWEN3_MOE = "tiny:qwen3_moe"
QWEN2_LAYERS = "tiny:qwen2?sliding_window=16&max_window_layers=1"  # layer 0 full, layer 1 windowed
LLAMA4 = "tiny:llama4_text"  # chunks of 32 on 3 RoPE layers, a NoPE layer with temperature from 7


def _train(rank, world_size, keys):
    result = run_training(**keys)
    return result if rank == 0 else None


def variant_case(tmp_path, world: int, model: str, sp: int, mode: str, **keys):
    """SP=`sp` in `mode` on `world` ranks against one process with the same global batch."""
    shared = {
        "model_name_or_path": model,
        "gradient_accumulation_steps": 2,
        "neat_packing": True,
        "learning_rate": 3e-3,
        **keys,
    }
    dp = world // sp
    reference = run_training(**case_keys(tmp_path, "ref", per_device_train_batch_size=2 * dp, **shared))
    candidate = run_ranks(
        _train,
        world,
        case_keys(tmp_path, "sp", per_device_train_batch_size=2, **parallel_keys(sp, mode), **shared),
    )[0]
    assert candidate["layout"] == expected_layout(sp, mode)
    return compare(reference, candidate)


CASES = [
    # (world, model, sp, mode, keys)
    (2, MISTRAL, 2, "zigzag-ring", {}),
    (2, GEMMA2, 2, "ulysses", {"neat_packing": False}),  # padded rows: the window and the cap
    (4, GEMMA3, 4, "hybrid", {}),
    (4, QWEN3_MOE, 2, "ulysses", {}),  # DP 2 x SP 2, with the router's load-balancing logits on
]

SWEEP = [
    (2, MISTRAL, 2, "ulysses", {}),
    (4, MISTRAL, 4, "hybrid", {}),
    (2, GEMMA3, 2, "ulysses", {}),
    (2, GEMMA3, 2, "zigzag-ring", {}),
    (4, GEMMA3, 4, "zigzag-ring", {}),
    (2, GEMMA2, 2, "zigzag-ring", {}),
    (
        4,
        GEMMA2,
        4,
        "zigzag-ring",
        {},
    ),  # ring 4 with windows: also covered by tests/parallel/test_attention.py
    (4, GEMMA2, 4, "hybrid", {}),
    (2, QWEN3_MOE, 2, "ulysses", {}),
    (2, QWEN3_MOE, 2, "zigzag-ring", {}),
    (2, QWEN2_LAYERS, 2, "zigzag-ring", {}),
    (4, QWEN2_LAYERS, 4, "hybrid", {}),
    (2, LLAMA4, 2, "zigzag-ring", {}),
    (4, LLAMA4, 4, "hybrid", {}),
]


@pytest.mark.parametrize(("world", "model", "sp", "mode", "keys"), CASES)
def test_attention_variants_match_single_process(tmp_path, world, model, sp, mode, keys):
    variant_case(tmp_path, world, model, sp, mode, **keys)


@pytest.mark.slow
@pytest.mark.parametrize(("world", "model", "sp", "mode", "keys"), SWEEP)
def test_attention_variants_sweep(tmp_path, world, model, sp, mode, keys):
    """The rest of the mode x model matrix (pytest -m slow)."""
    variant_case(tmp_path, world, model, sp, mode, **keys)


@pytest.mark.parametrize(
    ("world", "shape", "layout"),
    [
        # SP=4 slow: the SP=2 case proves the same choice of the ring for heads ulysses cannot split
        pytest.param(4, "hidden_size=48&num_heads=6&num_kv_heads=3", (1, 4), marks=pytest.mark.slow),
        (2, "hidden_size=72&num_heads=9&num_kv_heads=3", (1, 2)),
    ],
)
def test_auto_mode_trains_head_counts_ulysses_cannot_split(tmp_path, world, shape, layout):
    """The default mode: 6 query / 3 KV heads at SP=4 and SmolLM2's 9 / 3 at SP=2 go to the ring."""
    shared = {"model_name_or_path": f"tiny:llama?{shape}", "gradient_accumulation_steps": 2}
    reference = run_training(**case_keys(tmp_path, "ref", per_device_train_batch_size=2, **shared))
    keys = case_keys(tmp_path, "sp", per_device_train_batch_size=2, sequence_parallel_size=world, **shared)
    candidate = run_ranks(_train, world, keys)[0]
    assert candidate["layout"] == layout
    compare(reference, candidate)

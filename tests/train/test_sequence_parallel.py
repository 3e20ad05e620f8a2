"""DESIGN contract 8 for pt/sft: SP=N reproduces SP=1 per-step losses and gradients.

Each case trains 4 optimizer steps through the real config -> data -> trainer path on gloo ranks
and compares every step's loss (|delta|/loss <= 1e-5) and gradients (relative error <= 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..launcher import run_ranks
from .harness import expected_layout, parallel_keys, relative_error, run_training

DATA = str(Path(__file__).resolve().parents[2] / "data")
STEPS = 4


def _train(rank, world_size, keys):
    result = run_training(**keys)
    return result if rank == 0 else None


def case_keys(tmp_path, name, **keys):
    base = {
        "dataset": "demo_chat",
        "dataset_dir": DATA,
        "max_samples": 32,
        "max_steps": STEPS,
        "per_device_train_batch_size": 4,
        "cutoff_len": 96,
        "output_dir": str(tmp_path / name),
    }
    return {**base, **keys}


def compare(reference, candidate, steps: int = STEPS):
    assert len(reference["losses"]) == len(candidate["losses"]) == steps
    loss_errors = [abs(a - b) / abs(a) for a, b in zip(reference["losses"], candidate["losses"])]
    grad_errors = [relative_error(a, b) for a, b in zip(reference["grads"], candidate["grads"])]
    assert max(loss_errors) <= 1e-5, loss_errors
    assert max(grad_errors) <= 1e-4, grad_errors
    assert len(reference["eval_losses"]) == len(candidate["eval_losses"])
    for a, b in zip(reference["eval_losses"], candidate["eval_losses"]):
        assert abs(a - b) / abs(a) <= 1e-5, (a, b)
    return max(loss_errors), max(grad_errors)


CASES = [
    # (world, keys)
    (2, parallel_keys(2, "ulysses")),
    (
        2,
        {
            **parallel_keys(2, "zigzag-ring"),
            "neat_packing": True,
            # evaluation under SP: the same eval loss as SP=1
            "do_eval": True,
            "eval_dataset": "demo_messages",
            "per_device_eval_batch_size": 3,
        },
    ),
    (
        4,
        {
            **parallel_keys(4, "hybrid"),
            "gradient_accumulation_steps": 2,
            "per_device_train_batch_size": 2,
        },
    ),
    (
        4,
        {
            **parallel_keys(2, "ulysses"),
            "per_device_train_batch_size": 2,
            "neat_packing": True,
            # DP2 x SP2 with length grouping: the grouped order is shared like the plain one
            "group_by_length": True,
            # 5 held-out rows over 2 DP ranks: one rank runs a padding batch, no row counts twice
            "do_eval": True,
            "val_size": 5,
            "max_samples": 37,  # 32 left for training: 4 steps of one whole epoch
            "per_device_eval_batch_size": 2,
            "compute_accuracy": True,  # counted over every rank's shards, once per row
        },
    ),
    (
        2,
        {
            **parallel_keys(2, "zigzag-ring"),
            # a stream read, shuffled, tokenized and packed on the fly gives both SP ranks the same rows
            "streaming": True,
            "buffer_size": 8,
            "neat_packing": True,
        },
    ),
]


@pytest.mark.parametrize(("world", "keys"), CASES)
def test_sequence_parallel_matches_single_process(tmp_path, world, keys):
    shared = {
        k: v
        for k, v in keys.items()
        if not k.startswith("sequence_parallel")
        and k not in ("per_device_train_batch_size", "ulysses_degree")
    }
    dp = world // keys["sequence_parallel_size"]
    reference_batch = keys.get("per_device_train_batch_size", 4) * dp
    reference = run_training(
        **case_keys(tmp_path, "ref", per_device_train_batch_size=reference_batch, **shared)
    )
    candidate = run_ranks(_train, world, case_keys(tmp_path, "sp", **keys))[0]
    compare(reference, candidate)
    assert candidate["layout"] == expected_layout(
        keys["sequence_parallel_size"], keys["sequence_parallel_mode"]
    )
    assert bool(reference["eval_losses"]) == bool(keys.get("do_eval"))
    if keys.get("compute_accuracy"):
        assert 0 < reference["eval_metrics"]["eval_accuracy"] < 1
        assert candidate["eval_metrics"]["eval_accuracy"] == pytest.approx(
            reference["eval_metrics"]["eval_accuracy"], abs=1e-12
        )


def test_pretraining_stage_under_sequence_parallelism(tmp_path):
    """pt: packed text blocks, LoRA, SP=2 zigzag ring against SP=1."""
    shared = {"stage": "pt", "dataset": "demo_text", "finetuning_type": "lora", "cutoff_len": 64}
    reference = run_training(**case_keys(tmp_path, "ref", **shared))
    keys = case_keys(tmp_path, "sp", sequence_parallel_size=2, sequence_parallel_mode="zigzag-ring", **shared)
    compare(reference, run_ranks(_train, 2, keys)[0])


ARCHES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"]
MODES = ["ulysses", "zigzag-ring", "hybrid"]


# Llama (ulysses) and Qwen2 (zigzag ring) run by default; every other family is trained at SP=2 by
# the family sweep (tests/train/test_family_sweep.py); `pytest -m slow` runs this whole grid.
TWO_RANK_DEFAULT = {("llama", "ulysses"), ("qwen2", "zigzag-ring")}
TWO_RANK_SWEEP = [
    pytest.param(arch, mode, marks=() if (arch, mode) in TWO_RANK_DEFAULT else pytest.mark.slow)
    for arch in ARCHES
    for mode in ("ulysses", "zigzag-ring")
]


@pytest.mark.parametrize(("arch", "mode"), TWO_RANK_SWEEP)
def test_every_architecture_in_both_two_rank_modes(tmp_path, arch, mode):
    """SP=2 on each architecture, ulysses and zigzag ring (GQA 4 heads / 2 KV heads), packed rows, GA 2.
    Two ranks cannot split both ways: the hybrid runs on 4 (`test_sweep_sp4`, one case per mode by default)."""
    shared = {
        "model_name_or_path": f"tiny:{arch}",
        "neat_packing": True,
        "gradient_accumulation_steps": 2,
        "per_device_train_batch_size": 2,
    }
    reference = run_training(**case_keys(tmp_path, "ref", **shared))
    candidate = run_ranks(_train, 2, case_keys(tmp_path, "sp", **parallel_keys(2, mode), **shared))[0]
    compare(reference, candidate)
    assert candidate["layout"] == expected_layout(2, mode)


# One SP=4 case runs by default (KV heads replicated up to the ulysses degree); the SP=4 ring and
# hybrid run in CASES; `pytest -m slow` runs the rest of the sweep.
# None by default: end to end, SP=4 runs as hybrid in CASES (and ring 4 in test_recurrent_parallel);
# pure ulysses and ring over 4 ranks are checked at the attention level (tests/parallel/test_attention.py).
SP4_DEFAULT: set[tuple[str, str, str]] = set()
SP4_SWEEP = [
    pytest.param(arch, mode, kind, marks=() if (arch, mode, kind) in SP4_DEFAULT else pytest.mark.slow)
    for arch in ARCHES
    for mode in MODES
    for kind in ("full", "lora")
]


@pytest.mark.parametrize(("arch", "mode", "finetuning_type"), SP4_SWEEP)
def test_sweep_sp4(tmp_path, arch, mode, finetuning_type):
    """SP=4 on every architecture and mode, full and LoRA, 1 KV head (so kv < degree everywhere)."""
    shared = {
        "model_name_or_path": f"tiny:{arch}?num_kv_heads=1",
        "finetuning_type": finetuning_type,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
    }
    reference = run_training(**case_keys(tmp_path, "ref", **shared))
    candidate = run_ranks(_train, 4, case_keys(tmp_path, "sp", **parallel_keys(4, mode), **shared))[0]
    compare(reference, candidate)
    assert candidate["layout"] == expected_layout(4, mode)


def test_neftune_under_sequence_parallelism(tmp_path):
    """Each SP rank noises its own tokens with whole-document lengths; evaluation stays clean.

    lr 0 keeps the weights, so the SP=2 eval loss must equal the noiseless SP=1 one while the
    training loss moves."""
    shared = {"learning_rate": 0.0, "max_steps": 2, "do_eval": True, "val_size": 4, "neat_packing": True}
    reference = run_training(**case_keys(tmp_path, "ref", **shared))
    keys = case_keys(tmp_path, "sp", sequence_parallel_size=2, neftune_noise_alpha=20.0, **shared)
    noisy = run_ranks(_train, 2, keys)[0]
    assert noisy["eval_losses"] == pytest.approx(reference["eval_losses"], rel=1e-5)
    assert abs(noisy["losses"][0] - reference["losses"][0]) > 1e-4


@pytest.mark.parametrize(
    ("world", "mode"),
    [(2, "ulysses"), (2, "zigzag-ring"), pytest.param(4, "hybrid", marks=pytest.mark.slow)],
)
def test_bf16_training_matches_single_process(tmp_path, world, mode):
    """`bf16: true` (CPU autocast, packed rows) at SP 2 / 4 against SP=1 bf16. Measured here: losses
    within 2.2e-5, gradients within 3.3e-3 (bf16 rounding of differently split matmuls); a
    normalisation or merge bug is off by tens of percent."""
    shared = {"bf16": True, "neat_packing": True}
    reference = run_training(**case_keys(tmp_path, "ref", **shared))
    candidate = run_ranks(_train, world, case_keys(tmp_path, "sp", **parallel_keys(world, mode), **shared))[0]
    assert candidate["layout"] == expected_layout(world, mode)
    loss_errors = [abs(a - b) / abs(a) for a, b in zip(reference["losses"], candidate["losses"])]
    grad_errors = [relative_error(a, b) for a, b in zip(reference["grads"], candidate["grads"])]
    assert len(loss_errors) == STEPS and max(loss_errors) <= 2e-4, loss_errors
    assert max(grad_errors) <= 2e-2, grad_errors


MEMORY_CASES = [
    # (world, mode, memory keys): compared with SP=1 *without* them, so each option is shown exact too
    (
        2,
        "zigzag-ring",
        {"tiled_mlp": True, "tiled_mlp_tile_tokens": 16, "gradient_checkpointing_offload": True},
    ),
    # the MLP tiles do not depend on how attention is split: 2 ranks suffice
    (2, "ulysses", {"tiled_mlp": True, "tiled_mlp_tile_tokens": 8, "use_reentrant_gc": False}),
    (2, "ulysses", {"disable_gradient_checkpointing": True, "loss_chunk_tokens": 24}),
]


@pytest.mark.parametrize(("world", "mode", "memory"), MEMORY_CASES)
def test_memory_stack_under_sequence_parallelism(tmp_path, world, mode, memory):
    """Checkpointing (on by default; reentrant or not; off), host offload, tiled MLP and the loss chunk
    size change memory, never results: SP runs with them match the SP=1 run with the defaults."""
    shared = {"neat_packing": True, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 2}
    reference = run_training(**case_keys(tmp_path, "ref", **shared))
    keys = case_keys(tmp_path, "sp", **parallel_keys(world, mode), **memory, **shared)
    candidate = run_ranks(_train, world, keys)[0]
    compare(reference, candidate)
    assert candidate["layout"] == expected_layout(world, mode)

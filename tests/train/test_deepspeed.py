"""Sequence parallelism under DeepSpeed ZeRO-3 (CPU, gloo): SP=2 on two ranks whose weights are
partitioned reproduces the single-process losses and gradients step by step. Skipped where deepspeed is not
installed (the `[deepspeed]` extra, which CI installs).

The model is loaded from disk: ZeRO-3 builds a model from a config inside `zero.Init`, which draws
other random initial weights than a plain build, while saved weights load identically. ZeRO-3 keeps
gradients in its own partitioned buffers: they are gathered (`safe_get_full_grad`) right before
each engine step and compared with the single process's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..launcher import run_ranks
from .harness import ZERO3, relative_error, run_training
from .rl.fixed_rollouts import fixed_rollout_keys, train_with_fixed_rollouts, use_fixed_rollouts

pytest.importorskip("deepspeed")

DATA = str(Path(__file__).resolve().parents[2] / "data")


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    from ulysses_pro.models.tiny import make_tiny_model

    return str(make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama", seed=0))


def _losses_and_gathered_gradients(rank, world_size, keys):
    """Train under ZeRO-3; each optimizer step's gradients, gathered from the partitions."""
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.utils import safe_get_full_grad

    steps = []
    step = DeepSpeedEngine.step

    def gathered_then_step(engine, *args, **kwargs):
        # accelerate's backward runs the engine's backward and step together, so the gradients are
        # read here, between the two (every rank gathers: it is a collective).
        if engine.is_gradient_accumulation_boundary():
            grads = {}
            for name, param in engine.module.named_parameters():
                grad = safe_get_full_grad(param) if param.requires_grad else None
                if grad is not None:
                    grads[name] = grad.detach().clone().reshape(param.ds_shape)
            steps.append(grads)
        return step(engine, *args, **kwargs)

    DeepSpeedEngine.step = gathered_then_step
    try:
        result = run_training(**keys)
    finally:
        DeepSpeedEngine.step = step
    return {"losses": result["losses"], "grads": steps} if rank == 0 else None


@pytest.mark.parametrize(
    "keys",
    [
        # the tiled MLP's ZeRO-3 path: tiles recomputed over gathered weights, reduced once at the last
        {
            "stage": "sft",
            "dataset": "demo_chat",
            "finetuning_type": "full",
            "neat_packing": True,
            "tiled_mlp": True,
            "tiled_mlp_tile_tokens": 8,
        },
        # full fine-tuning: the reference is loaded again and partitioned (a deepcopy would be empty)
        {
            "stage": "dpo",
            "dataset": "demo_pairs",
            "finetuning_type": "full",
            "sequence_parallel_mode": "zigzag-ring",
        },
        # the LoRA reference and KTO's under ZeRO-3 (the default run covers DPO's full reference)
        pytest.param(
            {"stage": "dpo", "dataset": "demo_pairs", "finetuning_type": "lora"}, marks=pytest.mark.slow
        ),
        pytest.param(
            {"stage": "kto", "dataset": "demo_kto", "finetuning_type": "full"}, marks=pytest.mark.slow
        ),
    ],
    ids=["sft-full-packed-tiled-mlp", "dpo-full-ring", "dpo-lora", "kto-full"],
)
def test_zero3_with_sequence_parallelism_matches_one_process(tmp_path, saved_tiny_model, keys):
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps(ZERO3))
    common = {
        "model_name_or_path": saved_tiny_model,
        "dataset_dir": DATA,
        "max_samples": 16,
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "cutoff_len": 64,
        **keys,
    }
    single = {k: v for k, v in common.items() if not k.startswith(("sequence_parallel", "tiled_mlp"))}
    reference = run_training(**single, output_dir=str(tmp_path / "ref"))
    partitioned = run_ranks(
        _losses_and_gathered_gradients,
        2,
        {**common, "sequence_parallel_size": 2, "deepspeed": str(config), "output_dir": str(tmp_path / "z3")},
    )[0]
    assert len(partitioned["losses"]) == len(reference["losses"]) == 3
    for a, b in zip(reference["losses"], partitioned["losses"]):
        assert abs(a - b) / abs(a) <= 1e-5, (reference["losses"], partitioned["losses"])
    assert len(partitioned["grads"]) == len(reference["grads"]) == 3
    errors = [relative_error(a, b) for a, b in zip(reference["grads"], partitioned["grads"])]
    assert max(errors) <= 1e-4, errors


def _rl_under_zero3(rank, world_size, keys):
    use_fixed_rollouts()
    return _losses_and_gathered_gradients(rank, world_size, keys)


@pytest.mark.parametrize("stage", ["ppo", pytest.param("grpo", marks=pytest.mark.slow)])
def test_zero3_rl_stages_with_sequence_parallelism_match_one_process(tmp_path, saved_tiny_model, stage):
    """Full fine-tuning under ZeRO-3, SP=2, fixed rollouts: the reference (and PPO's full reward
    model, and its critic) are partitioned like the policy; the step matches one process."""
    config = tmp_path / "zero3.json"
    # Every parameter partitioned, even the small ones ZeRO-3 would keep whole (the value heads).
    zero3 = {
        **ZERO3,
        "zero_optimization": {**ZERO3["zero_optimization"], "stage3_param_persistence_threshold": 0},
    }
    config.write_text(json.dumps(zero3))
    common = fixed_rollout_keys(stage, tmp_path, model_name_or_path=saved_tiny_model)
    reference = run_ranks(train_with_fixed_rollouts, 1, {**common, "output_dir": str(tmp_path / "ref")})[0]
    partitioned = run_ranks(
        _rl_under_zero3,
        2,
        {**common, "sequence_parallel_size": 2, "deepspeed": str(config), "output_dir": str(tmp_path / "z3")},
    )[0]
    assert len(partitioned["losses"]) == len(reference["losses"]) == 2
    for a, b in zip(reference["losses"], partitioned["losses"]):
        assert abs(a - b) <= 1e-5, (reference["losses"], partitioned["losses"])
    errors = [relative_error(a, b) for a, b in zip(reference["grads"], partitioned["grads"])]
    assert len(errors) == 2 and max(errors) <= 1e-4, errors
    if stage == "ppo":
        from safetensors.torch import load_file

        head = load_file(tmp_path / "z3" / "value_head.safetensors")  # gathered from the partitions
        assert head["v_head.summary.weight"].numel() > 0 and head["v_head.summary.weight"].abs().sum() > 0

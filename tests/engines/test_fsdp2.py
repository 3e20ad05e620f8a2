"""FSDP2 driven by this project (`engines/fsdp2.py`): the whole world shards every weight, and
training under FSDP2 + SP reproduces the single-process losses and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.config.fsdp import fsdp_settings

from ..launcher import run_ranks
from ..train.harness import parallel_keys, relative_error, run_training
from ..train.rl.fixed_rollouts import fixed_rollout_keys, train_with_fixed_rollouts, use_fixed_rollouts
from ..train.test_sequence_parallel import DATA, STEPS, case_keys, compare


def test_llamafactory_fsdp_keys_keep_their_meaning():
    settings = fsdp_settings(
        ["full_shard", "auto_wrap"], {"fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}
    )
    assert settings.reshard_after_forward and not settings.cpu_offload
    assert settings.layer_classes == ("LlamaDecoderLayer",)
    settings = fsdp_settings("shard_grad_op offload", {"version": 2})
    assert not settings.reshard_after_forward and settings.cpu_offload
    assert fsdp_settings(True, {"reshard_after_forward": "false", "cpu_offload": True}).cpu_offload
    assert fsdp_settings(None, None) is None


@pytest.mark.parametrize(
    ("fsdp", "config", "words"),
    [
        ("full_shard", {"version": 1}, "FSDP1 is not supported"),
        ("hybrid_shard", None, "fsdp option hybrid_shard is not supported"),
        ("full_shard", {"auto_wrap_policy": "SIZE_BASED_WRAP"}, "size-based wrapping is not supported"),
        ("full_shard", {"unheard_of": 1}, "unknown fsdp_config key(s) unheard_of"),
        (None, {"version": 2}, "fsdp_config is set but fsdp is not"),
    ],
)
def test_fsdp_options_fsdp2_cannot_honour_are_refused_by_name(fsdp, config, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fsdp_settings(fsdp, config)


def test_fsdp_keys_never_reach_accelerate(tmp_path):
    config = load_config(
        {"model_name_or_path": "tiny:llama", "output_dir": str(tmp_path), "fsdp": "full_shard", "bf16": True}
    )
    assert config.fsdp is not None and not config.training.fsdp
    with pytest.raises(ConfigError, match="load_best_model_at_end with fsdp"):
        load_config(
            {
                "model_name_or_path": "tiny:llama",
                "output_dir": str(tmp_path),
                "fsdp": True,
                "load_best_model_at_end": True,
                "eval_strategy": "steps",
            }
        )
    with pytest.raises(ConfigError, match="fp16 with FSDP2"):
        load_config(
            {"model_name_or_path": "tiny:llama", "output_dir": str(tmp_path), "fsdp": True, "fp16": True}
        )


class ShardFraction(TrainerCallback):
    """The fractions of the model's parameter values and of the optimizer state this rank holds at
    the end of training (FSDP2 pads the last shard of an uneven split)."""

    parameters = optimizer_state = None

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.parameters = _local_fraction(list(model.parameters()))
        states = getattr(optimizer, "optimizer", optimizer).state.values()
        self.optimizer_state = _local_fraction([t for s in states for t in s.values() if t.dim() > 0])


def _local_fraction(tensors) -> float:
    local = sum(t.to_local().numel() if hasattr(t, "to_local") else t.numel() for t in tensors)
    return local / sum(t.numel() for t in tensors)


def _train_sharded(rank, world_size, keys):
    shards = ShardFraction()
    result = run_training(callbacks=(shards,), **keys)
    result["local_fraction"] = shards.parameters
    result["optimizer_fraction"] = shards.optimizer_state
    return result if rank == 0 else None


@pytest.mark.parametrize(
    ("world", "sp", "mode", "extra"),
    [
        (2, 2, "ulysses", {}),
        # DP 2 x SP 2 on four shards: KTO and the checkpointed SFT run (conftest.py) train so by default
        pytest.param(4, 2, "zigzag-ring", {}, marks=pytest.mark.slow),
        pytest.param(
            2, 2, "zigzag-ring", {"finetuning_type": "lora", "lora_target": "all"}, marks=pytest.mark.slow
        ),
        pytest.param(4, 4, "hybrid", {"finetuning_type": "lora"}, marks=pytest.mark.slow),
        pytest.param(4, 2, "ulysses", {"finetuning_type": "lora"}, marks=pytest.mark.slow),
    ],
)
def test_fsdp2_with_sequence_parallelism_matches_single_process(tmp_path, world, sp, mode, extra):
    """Gradient checkpointing on (the default); each rank holds 1/world of every parameter and of the
    optimizer state."""
    reference = run_training(**case_keys(tmp_path, "ref", **extra))
    dp = world // sp
    candidate = run_ranks(
        _train_sharded,
        world,
        case_keys(
            tmp_path,
            "fsdp",
            fsdp="full_shard",
            per_device_train_batch_size=4 // dp,
            **parallel_keys(sp, mode),
            **extra,
        ),
    )[0]
    compare(reference, candidate)
    assert candidate["local_fraction"] == pytest.approx(1 / world, rel=0.02)
    assert candidate["optimizer_fraction"] == pytest.approx(1 / world, rel=0.02)


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_the_saved_model_is_whole_and_equals_the_single_process_one(tmp_path):
    """The final save gathers every rank's shards into one Hugging Face folder."""
    reference_keys = case_keys(tmp_path, "ref", max_steps=2)
    run_training(**reference_keys)
    sharded_keys = case_keys(tmp_path, "fsdp", max_steps=2, fsdp="full_shard", **parallel_keys(2, "ulysses"))
    run_ranks(_train_sharded, 2, sharded_keys)
    reference, sharded = _weights(tmp_path / "ref"), _weights(tmp_path / "fsdp")
    assert reference.keys() == sharded.keys()
    # Adam turns a gradient's last-bit differences into whole-learning-rate steps on the entries
    # whose gradient is near zero: the weights agree as tensors, not to the last entry.
    errors = {name: float((sharded[name] - w).norm() / w.norm()) for name, w in reference.items()}
    assert max(errors.values()) <= 1e-4, errors


def test_a_sharded_checkpoint_resumes_at_another_world_size(tmp_path, checkpointed_run):
    """Checkpoints hold each rank's shards (torch.distributed.checkpoint); one written by 4 ranks
    (DP 2 x SP 2) resumes on 2 (SP 2) with the global batch kept by doubling gradient accumulation,
    and continues as the uninterrupted run did."""
    run_dir, whole = checkpointed_run
    checkpoint = run_dir / "checkpoint-2"
    assert (checkpoint / "fsdp2_state" / ".metadata").is_file()
    assert not (checkpoint / "model.safetensors").exists()  # no gather to one rank per checkpoint
    keys = case_keys(
        tmp_path,
        "two",
        fsdp="full_shard",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        resume_from_checkpoint=str(checkpoint),
        **parallel_keys(2, "ulysses"),
    )
    resumed = run_ranks(_train_sharded, 2, keys)[0]
    assert len(resumed["losses"]) == len(whole["losses"]) == STEPS
    errors = [abs(a - b) / abs(a) for a, b in zip(whole["losses"][2:], resumed["losses"][2:])]
    assert max(errors) <= 1e-5, (whole["losses"], resumed["losses"])


def _train_counting_shardings(rank, world_size, keys):
    """`_train_sharded`, also counting the models FSDP2 shards (the policy, a frozen reference, PPO's
    reward model)."""
    from ulysses_pro.train import workflow
    from ulysses_pro.train.rl import reward_model

    sharded = []
    shard_model = workflow.shard_model

    def counting(model, *args, **kwargs):
        sharded.append(type(model).__name__)
        return shard_model(model, *args, **kwargs)

    workflow.shard_model = reward_model.shard_model = counting
    result = _train_sharded(rank, world_size, keys)
    if result is not None:
        result["sharded_models"] = len(sharded)
    return result


PREFERENCE = {
    "dataset_dir": DATA,
    "max_samples": 16,
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "cutoff_len": 64,
}
PREFERENCE_CASES = [
    # (world, keys): world 2 is SP 2, world 4 is DP 2 x SP 2 (per-device batch 2)
    (
        2,
        {
            "stage": "dpo",
            "dataset": "demo_pairs",
            "finetuning_type": "full",
            "sequence_parallel_mode": "zigzag-ring",
        },
    ),
    (4, {"stage": "kto", "dataset": "demo_kto", "finetuning_type": "full"}),
    pytest.param(
        2, {"stage": "dpo", "dataset": "demo_pairs", "finetuning_type": "lora"}, marks=pytest.mark.slow
    ),
    pytest.param(
        4, {"stage": "dpo", "dataset": "demo_pairs", "finetuning_type": "lora"}, marks=pytest.mark.slow
    ),
    pytest.param(
        4, {"stage": "dpo", "dataset": "demo_pairs", "finetuning_type": "full"}, marks=pytest.mark.slow
    ),
    pytest.param(
        2, {"stage": "kto", "dataset": "demo_kto", "finetuning_type": "lora"}, marks=pytest.mark.slow
    ),
    pytest.param(
        2, {"stage": "rm", "dataset": "demo_pairs", "finetuning_type": "full"}, marks=pytest.mark.slow
    ),
    pytest.param(
        4, {"stage": "sft", "dataset": "demo_chat", "finetuning_type": "lora"}, marks=pytest.mark.slow
    ),
    pytest.param(
        2, {"stage": "sft", "dataset": "demo_chat", "finetuning_type": "freeze"}, marks=pytest.mark.slow
    ),
    pytest.param(
        2, {"stage": "pt", "dataset": "demo_text", "finetuning_type": "full"}, marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize(("world", "keys"), PREFERENCE_CASES)
def test_stages_under_fsdp2_and_sequence_parallelism_match_one_process(tmp_path, world, keys):
    common = {**PREFERENCE, **keys}
    single = {k: v for k, v in common.items() if not k.startswith("sequence_parallel")}
    reference = run_training(**single, output_dir=str(tmp_path / "ref"))
    sharded_keys = {
        **common,
        "sequence_parallel_size": 2,
        "fsdp": "full_shard",
        "output_dir": str(tmp_path / "fsdp"),
    }
    sharded_keys["per_device_train_batch_size"] = PREFERENCE["per_device_train_batch_size"] * 2 // world
    sharded = run_ranks(_train_counting_shardings, world, sharded_keys)[0]
    # full fine-tuning DPO and KTO shard their frozen reference copy too; LoRA's is the policy
    frozen_reference = keys["stage"] in ("dpo", "kto") and keys["finetuning_type"] == "full"
    assert sharded["sharded_models"] == 1 + frozen_reference
    assert sharded["local_fraction"] == pytest.approx(1 / world, rel=0.02)
    assert len(sharded["losses"]) == len(reference["losses"]) == 3
    for a, b in zip(reference["losses"], sharded["losses"]):
        assert abs(a - b) / abs(a) <= 1e-5, (reference["losses"], sharded["losses"])
    errors = [relative_error(a, b) for a, b in zip(reference["grads"], sharded["grads"])]
    assert max(errors) <= 1e-4, errors


def _rl_sharded(rank, world_size, keys):
    use_fixed_rollouts()
    return _train_counting_shardings(rank, world_size, keys)


@pytest.mark.parametrize(
    ("world", "stage"),
    [
        (2, "ppo"),
        pytest.param(2, "grpo", marks=pytest.mark.slow),
        pytest.param(4, "grpo", marks=pytest.mark.slow),
    ],
)
def test_rl_stages_under_fsdp2_and_sequence_parallelism_match_one_process(tmp_path, world, stage):
    """Fixed rollouts, full fine-tuning: the policy (with PPO's value head) sharded, SP 2."""
    common = fixed_rollout_keys(stage, tmp_path)
    reference = run_ranks(train_with_fixed_rollouts, 1, {**common, "output_dir": str(tmp_path / "ref")})[0]
    sharded_keys = {
        **common,
        "sequence_parallel_size": 2,
        "fsdp": "full_shard",
        "output_dir": str(tmp_path / "fsdp"),
    }
    sharded_keys["per_device_train_batch_size"] = 4 // world  # DP 2 x SP 2 on 4 ranks
    sharded = run_ranks(_rl_sharded, world, sharded_keys)[0]
    # the policy, its frozen reference and (PPO) the full reward model are all sharded
    assert sharded["sharded_models"] == (3 if stage == "ppo" else 2)
    assert len(sharded["losses"]) == len(reference["losses"]) == 2
    for a, b in zip(reference["losses"], sharded["losses"]):
        assert abs(a - b) <= 1e-5, (reference["losses"], sharded["losses"])
    errors = [relative_error(a, b) for a, b in zip(reference["grads"], sharded["grads"])]
    assert len(errors) == 2 and max(errors) <= 1e-4, errors


class ShardDtypes(TrainerCallback):
    """The dtypes of the sharded parameters (the masters the optimizer steps)."""

    dtypes = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.dtypes = {p.dtype for p in model.parameters() if p.requires_grad}


def _train_bf16(rank, world_size, keys):
    dtypes = ShardDtypes()
    result = run_training(callbacks=(dtypes,), **keys)
    result["master_dtypes"] = dtypes.dtypes
    return result if rank == 0 else None


@pytest.mark.parametrize(
    ("precision", "masters"),
    [
        ({"bf16": True}, torch.float32),
        pytest.param({"bf16": True, "pure_bf16": True}, torch.bfloat16, marks=pytest.mark.slow),
    ],
    ids=["bf16", "pure-bf16"],
)
def test_bf16_under_fsdp2_keeps_its_masters_and_matches_one_process(tmp_path, precision, masters):
    """`bf16: true`: fp32 master weights, bf16 compute, fp32 reduction (`pure_bf16`: bf16 throughout);
    against SP=1 in the same precision as in the DDP bf16 test (tests/train/test_sequence_parallel.py),
    within bf16 rounding."""
    shared = {**precision, "neat_packing": True}
    reference = run_training(**case_keys(tmp_path, "ref", **shared))
    candidate = run_ranks(
        _train_bf16,
        2,
        case_keys(tmp_path, "fsdp", fsdp="full_shard", **parallel_keys(2, "ulysses"), **shared),
    )[0]
    assert candidate["master_dtypes"] == {masters}
    loss_errors = [abs(a - b) / abs(a) for a, b in zip(reference["losses"], candidate["losses"])]
    grad_errors = [relative_error(a, b) for a, b in zip(reference["grads"], candidate["grads"])]
    assert len(loss_errors) == STEPS and max(loss_errors) <= 2e-4, loss_errors
    assert max(grad_errors) <= 2e-2, grad_errors


@pytest.mark.parametrize(
    ("fsdp", "memory"),
    [
        # FSDP2's CPUOffloadPolicy (shards, gradients and optimizer state in host memory) with
        # shard_grad_op (gathered weights kept from forward to backward)
        ("shard_grad_op offload", {}),
        # the memory stack under FSDP2: tiled MLP, host-offloaded checkpoints, a small loss chunk
        (
            "full_shard",
            {
                "tiled_mlp": True,
                "tiled_mlp_tile_tokens": 16,
                "gradient_checkpointing_offload": True,
                "loss_chunk_tokens": 24,
            },
        ),
    ],
    ids=["offload-shard-grad-op", "memory-stack"],
)
def test_fsdp2_options_and_the_memory_stack_keep_the_single_process_numbers(tmp_path, fsdp, memory):
    reference = run_training(**case_keys(tmp_path, "ref"))
    candidate = run_ranks(
        _train_sharded, 2, case_keys(tmp_path, "fsdp", fsdp=fsdp, **parallel_keys(2, "zigzag-ring"), **memory)
    )[0]
    compare(reference, candidate)

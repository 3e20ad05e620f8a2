"""The frozen reference of full-parameter DPO / KTO / PPO / GRPO: in the run's compute dtype (not the
fp32 the policy's trainable weights were upcast to), equal to the model as loaded, frozen, on the
policy's device, scored under the policy's autocast, and sharded like the policy under FSDP2."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from ulysses_pro.models.loader import compute_dtype_for, load_model, load_tokenizer
from ulysses_pro.train.reference import ReferenceModel

from .harness import training_config


def _policy_and_reference(**keys):
    config = training_config(stage="dpo", dataset="demo_pairs", **keys)
    tokenizer = load_tokenizer(config.model)
    policy = load_model(config.model, config.finetuning, tokenizer, config.training)
    dtype = compute_dtype_for(config.training, config.finetuning)
    mixed = dtype != torch.float32
    reference = ReferenceModel.build(policy, None, dtype, autocast_dtype=dtype if mixed else None)
    return config, tokenizer, policy, reference.to(config.training.device)


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_the_frozen_reference_holds_the_loaded_weights_in_the_compute_dtype(finetuning_type):
    config, tokenizer, policy, reference = _policy_and_reference(finetuning_type=finetuning_type, bf16=True)
    assert any(p.dtype == torch.float32 for p in policy.parameters())  # the policy's upcast masters
    frozen = dict(reference.frozen.named_parameters())
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in frozen.values())
    assert {p.device for p in frozen.values()} == {config.training.device}
    # lossless: the copy is the model a frozen load (ref_model, LLaMA-Factory's reference) gives
    loaded = dict(
        load_model(
            config.model, config.finetuning, tokenizer, config.training, is_trainable=False
        ).named_parameters()
    )
    assert frozen.keys() == loaded.keys()
    assert all(torch.equal(frozen[name], loaded[name]) for name in frozen)


def test_the_frozen_reference_scores_under_the_policys_autocast():
    _, _, policy, reference = _policy_and_reference(finetuning_type="full", bf16=True)
    with reference.scoring(policy) as module:
        assert module is reference.frozen
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        hidden = module(input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True).hidden_states[-1]
    assert hidden.dtype == torch.bfloat16


def test_an_fp32_run_keeps_an_fp32_reference_without_autocast():
    _, _, policy, reference = _policy_and_reference(finetuning_type="full")
    assert {p.dtype for p in reference.frozen.parameters()} == {torch.float32}
    with reference.scoring(policy):
        assert not torch.is_autocast_enabled("cpu")


def test_under_fsdp2_the_frozen_reference_is_sharded_in_the_compute_dtype():
    from ulysses_pro.engines.fsdp2 import is_sharded, shard_model

    config, _, _, reference = _policy_and_reference(finetuning_type="full", bf16=True, fsdp="full_shard")
    try:
        shard_model(reference.frozen, config.fsdp, config.training)
        assert is_sharded(reference.frozen)
        shards = [p for p in reference.frozen.parameters()]
        assert all(hasattr(p, "to_local") for p in shards)  # DTensors: FSDP2 owns them
        assert {p.to_local().dtype for p in shards} == {torch.bfloat16}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_modules_the_model_class_keeps_in_fp32_stay_fp32_in_the_copy():
    """transformers' `_keep_in_fp32_modules` names whole dotted components ("wo", "model.visual")."""
    from torch import nn

    from ulysses_pro.train.reference import in_compute_dtype

    model = nn.Module()
    model.model = nn.Module()
    for name in ("visual", "wo", "wordy"):
        setattr(model.model, name, nn.Linear(2, 2))
    model._keep_in_fp32_modules = ["model.visual", "wo"]
    in_compute_dtype(model, torch.bfloat16)
    dtypes = {name.rsplit(".", 1)[0]: p.dtype for name, p in model.named_parameters()}
    assert dtypes == {"model.visual": torch.float32, "model.wo": torch.float32, "model.wordy": torch.bfloat16}

"""Full, freeze and LoRA parameter setups."""

from __future__ import annotations

import pytest

from ulysses_pro.config import load_config
from ulysses_pro.models.loader import load_model, load_tokenizer, parse_tiny_spec


def build(**keys):
    config = load_config(
        {"model_name_or_path": "tiny:llama?num_layers=4", "output_dir": "/tmp/unused", **keys}
    )
    tokenizer = load_tokenizer(config.model)
    return load_model(config.model, config.finetuning, tokenizer, config.training)


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_parse_tiny_spec():
    assert parse_tiny_spec("tiny:qwen3?hidden_size=96&num_layers=3") == (
        "qwen3",
        {"hidden_size": 96, "num_layers": 3},
    )
    assert parse_tiny_spec("tiny:gemma2?attn_logit_softcapping=2.5") == (
        "gemma2",
        {"attn_logit_softcapping": 2.5},
    )
    with pytest.raises(ValueError, match="key=<number>"):
        parse_tiny_spec("tiny:llama?hidden_size=big")


def test_full_trains_everything():
    model = build(finetuning_type="full")
    assert trainable(model) == {name for name, _ in model.named_parameters()}


def test_freeze_last_and_first_layers():
    last = trainable(build(finetuning_type="freeze", freeze_trainable_layers=2))
    assert last and all(".layers.2." in n or ".layers.3." in n for n in last)
    first = trainable(build(finetuning_type="freeze", freeze_trainable_layers=-1))
    assert first and all(".layers.0." in n for n in first)
    mlp_only = trainable(
        build(finetuning_type="freeze", freeze_trainable_layers=1, freeze_trainable_modules="mlp")
    )
    assert mlp_only and all(".layers.3.mlp." in n for n in mlp_only)
    extra = trainable(
        build(finetuning_type="freeze", freeze_trainable_layers=1, freeze_extra_modules="embed_tokens")
    )
    assert any("embed_tokens" in n for n in extra)
    with pytest.raises(ValueError, match="match no parameter"):
        build(finetuning_type="freeze", freeze_trainable_modules="attention_typo")


def test_lora_all_targets_every_linear_but_the_head():
    model = build(finetuning_type="lora", lora_rank=4)
    names = trainable(model)
    assert names and all("lora_" in n for n in names)
    for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{module}.lora_A" in n for n in names), module
    assert not any("lm_head" in n for n in names)
    config = model.peft_config["default"]
    assert config.r == 4 and config.lora_alpha == 8


def test_lora_named_targets_and_bad_target():
    names = trainable(build(finetuning_type="lora", lora_target="q_proj,v_proj"))
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="available Linear modules"):
        build(finetuning_type="lora", lora_target="nonexistent_proj")


def test_train_from_scratch_builds_the_architecture_with_fresh_weights(tmp_path):
    import torch

    from ulysses_pro.models.tiny import make_tiny_model

    folder = make_tiny_model("qwen2", tmp_path / "model", seed=3)
    saved = build(model_name_or_path=str(folder), finetuning_type="full")
    fresh = build(model_name_or_path=str(folder), finetuning_type="full", train_from_scratch=True)
    again = build(model_name_or_path=str(folder), finetuning_type="full", train_from_scratch=True)
    assert type(fresh) is type(saved) and fresh.config.num_hidden_layers == saved.config.num_hidden_layers
    weights = dict(saved.named_parameters())
    changed = [n for n, p in fresh.named_parameters() if p.dim() > 1 and not torch.equal(p, weights[n])]
    assert changed and len(changed) == sum(p.dim() > 1 for p in fresh.parameters())  # every matrix is new
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), again.parameters()))  # seeded


def test_forwards_installed_after_loading_survive_train_and_eval_switches(tmp_path):
    """transformers (with the `kernels` package it requires) re-kernelizes a model loaded from a
    folder on every train()/eval() switch, putting the class forward back on each hub-kernel layer:
    the Gated DeltaNet's SP/packing forward and the efficient RMSNorm must stay installed."""
    from ulysses_pro.models.attention import isolate_packed_documents
    from ulysses_pro.models.efficient_norm import use_efficient_rms_norms
    from ulysses_pro.models.recurrent import recurrent_mixers
    from ulysses_pro.models.tiny import make_tiny_model

    folder = make_tiny_model("qwen3_5_text", tmp_path / "model")
    model = build(model_name_or_path=str(folder), finetuning_type="full")
    isolate_packed_documents(model)
    assert use_efficient_rms_norms(model) > 0
    patched = [m for _, m in recurrent_mixers(model)] + [m for m in model.modules() if hasattr(m, "_ulysses_eps")]
    assert len(patched) > 3 and all("forward" in m.__dict__ for m in patched)
    for _ in range(2):
        model.eval()
        model.train()
    assert all("forward" in m.__dict__ for m in patched)

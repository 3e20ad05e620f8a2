"""LLaMA-Factory's cheap training options: LoRA+ learning rates, create_new_adapter, pure_bf16,
upcast_layernorm."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.config import ConfigError, load_config

from .harness import run_training, training_config


def built_trainer(tmp_path, **keys):
    """The trainer of a run, with its optimizer, before any step."""
    from ulysses_pro.train.stages import run_stage

    captured = {}

    class Stop(__import__("transformers").TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            model = kwargs["model"]
            captured["optimizer"] = kwargs["optimizer"]
            captured["model"] = model
            # before the first step changes them
            captured["lora_b_norm"] = sum(
                p.abs().sum().item() for n, p in model.named_parameters() if "lora_B" in n
            )

    run_stage(
        training_config(
            dataset="demo_tasks", dataset_dir="data", max_steps=1, output_dir=str(tmp_path), **keys
        ),
        callbacks=[Stop()],
    )
    return captured


def test_loraplus_gives_lora_b_ratio_times_the_learning_rate(tmp_path):
    captured = built_trainer(
        tmp_path, finetuning_type="lora", loraplus_lr_ratio=16.0, learning_rate=1e-4, weight_decay=0.01
    )
    names = {id(p): n for n, p in captured["model"].named_parameters()}
    groups = captured["optimizer"].param_groups
    by_kind = {}
    for group in groups:
        kinds = {"B" if "lora_B" in names[id(p)] else "A" for p in group["params"]}
        assert len(kinds) == 1
        by_kind.setdefault(kinds.pop(), set()).add(group["initial_lr"])
    assert by_kind == {"A": {1e-4}, "B": {1.6e-3}}


def test_loraplus_needs_lora(tmp_path):
    with pytest.raises(ConfigError, match="loraplus_lr_ratio: needs finetuning_type: lora"):
        load_config({"model_name_or_path": "tiny:llama", "finetuning_type": "full", "loraplus_lr_ratio": 16})


def test_create_new_adapter_merges_the_given_one_and_trains_a_fresh_one(tmp_path):
    first = run_training(
        dataset="demo_tasks",
        dataset_dir="data",
        finetuning_type="lora",
        max_steps=2,
        learning_rate=1e-2,
        output_dir=str(tmp_path / "first"),
        save_strategy="steps",
        save_steps=2,
    )
    assert first["losses"]
    resumed = built_trainer(
        tmp_path / "resume", finetuning_type="lora", adapter_name_or_path=str(tmp_path / "first")
    )
    fresh = built_trainer(
        tmp_path / "fresh",
        finetuning_type="lora",
        adapter_name_or_path=str(tmp_path / "first"),
        create_new_adapter=True,
    )

    assert resumed["lora_b_norm"] > 0  # the trained adapter resumes
    assert fresh["lora_b_norm"] == 0  # a new adapter starts at zero on merged weights


def test_pure_bf16_keeps_trainable_weights_in_bf16_and_trains(tmp_path):
    captured = built_trainer(tmp_path, pure_bf16=True)
    dtypes = {p.dtype for p in captured["model"].parameters() if p.requires_grad}
    assert dtypes == {torch.bfloat16}
    result = run_training(
        dataset="demo_tasks",
        dataset_dir="data",
        pure_bf16=True,
        max_steps=3,
        output_dir=str(tmp_path / "run"),
    )
    assert len(result["losses"]) == 3 and all(torch.isfinite(torch.tensor(result["losses"])))


def test_upcast_layernorm_keeps_norms_in_fp32(tmp_path):
    captured = built_trainer(tmp_path, pure_bf16=True, upcast_layernorm=True)
    params = dict(captured["model"].named_parameters())
    norms = [n for n in params if "norm" in n]
    assert norms and all(params[n].dtype == torch.float32 for n in norms)
    assert params["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_add_tokens_resizes_the_vocabulary_and_trains_the_new_rows(tmp_path):
    from ulysses_pro.models.tiny import make_tiny_model

    model_dir = make_tiny_model("llama", tmp_path / "model")
    captured = built_trainer(
        tmp_path / "run",
        model_name_or_path=str(model_dir),
        finetuning_type="lora",
        add_special_tokens="<|tool|>,<|result|>",
        template="chatml",
    )
    model = captured["model"]
    embeddings = model.get_input_embeddings()
    assert embeddings.weight.shape[0] == 1088  # 1024 + 2, padded to a multiple of 64
    new_rows = embeddings.weight[1024:1026].detach()
    old_mean = embeddings.weight[:1024].detach().mean(0)
    # noisy mean: near the old rows' mean (std 1/sqrt(64) = 0.125 per entry), not zero, not equal
    assert 0 < (new_rows - old_mean).std().item() < 0.25 and not torch.equal(new_rows[0], new_rows[1])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n and "modules_to_save" in n for n in trainable)


def test_a_tokenizer_larger_than_the_embeddings_is_named(tmp_path, caplog):
    from ulysses_pro.models.loader import load_model, load_tokenizer
    from ulysses_pro.models.tiny import make_tiny_model

    model_dir = make_tiny_model("llama", tmp_path / "model")
    config = training_config(model_name_or_path=str(model_dir), dataset="demo_tasks", dataset_dir="data")
    tokenizer = load_tokenizer(config.model)
    tokenizer.add_tokens(["<extra_a>", "<extra_b>"])
    with caplog.at_level("WARNING"):
        load_model(config.model, config.finetuning, tokenizer, config.training)
    assert "the tokenizer has 1026 tokens but the model's embedding 1024 rows" in caplog.text
    assert "set resize_vocab: true" in caplog.text

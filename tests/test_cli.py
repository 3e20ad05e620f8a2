"""End to end through the command line: multi-process launch, outputs, the legacy script, errors."""

from __future__ import annotations

import json

import pytest

from .cli_runner import run_cli, write_config


def test_two_process_sft_writes_hf_outputs(tmp_path):
    config = write_config(tmp_path)
    result = run_cli(["-m", "ulysses_pro", "train", str(config)], {"NPROC_PER_NODE": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 6 and all(loss > 0 for loss in losses)
    assert (out / "checkpoint-3" / "trainer_state.json").is_file() and (out / "checkpoint-6").is_dir()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "training_loss.png").stat().st_size > 1000
    assert "[samples before training]" in result.stdout and "[samples after training]" in result.stdout


def test_two_process_sequence_parallel_lora(tmp_path):
    config = write_config(
        tmp_path,
        finetuning_type="lora",
        sequence_parallel_size=2,
        sequence_parallel_mode="zigzag-ring",
        max_steps=3,
        save_steps=3,
    )
    result = run_cli(["-m", "ulysses_pro", "train", str(config)], {"NPROC_PER_NODE": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sequence parallel: world 2 = dp 1 x sp 2 (ulysses 1 x ring 2" in result.stdout
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert "[samples after training]" in result.stdout


def test_legacy_script_pt_lora_with_dash_overrides(tmp_path):
    config = write_config(
        tmp_path, stage="pt", dataset="demo_text", finetuning_type="lora", neat_packing=False, cutoff_len=64
    )
    result = run_cli(
        [
            "train_with_ulysses_pro.py",
            "--config_file",
            str(config),
            "--lora_rank",
            "4",
            "max_steps=2",
            "--save_steps",
            "2",
        ]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert (out / "adapter_model.safetensors").is_file()


def test_legacy_script_debug_and_adjust_lr(tmp_path):
    config = write_config(tmp_path, max_steps=2, save_steps=2, neat_packing=False, plot_loss=False)
    result = run_cli(
        [
            "train_with_ulysses_pro.py",
            "--debug",
            "--adjust-lr",
            "2.0",
            "--config_file",
            str(config),
            "pref_beta=0.15",
        ]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "learning rate adjusted from 0.003 to 0.006" in result.stdout
    assert "[ulysses-pro rank 0]" in result.stdout  # every line tagged with its rank
    assert "world size 1, process 0: no sequence parallelism" in result.stdout
    assert "gradient guard on: centralization, clipping, lr_boost, noise, small_grad_scaling" in result.stdout
    assert "batch: input_ids (2, " in result.stdout and "target tokens" in result.stdout
    assert "step 2 took" in result.stdout
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert any("guard/grad_mean_abs" in entry for entry in state["log_history"])


def test_resume_from_last_checkpoint_unless_overwrite(tmp_path):
    config = write_config(tmp_path, max_steps=2, save_steps=2, neat_packing=False)
    assert run_cli(["-m", "ulysses_pro", "train", str(config)]).returncode == 0
    resumed = run_cli(["-m", "ulysses_pro", "train", str(config), "max_steps=3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3

    # A checkpoint that pickles a class outside the allow-list is refused, not loaded.
    import argparse

    import torch

    checkpoint = max((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    rng_file = checkpoint / "rng_state.pth"
    torch.save({**torch.load(rng_file, weights_only=False), "extra": argparse.Namespace(a=1)}, rng_file)
    refused = run_cli(["-m", "ulysses_pro", "train", str(config), "max_steps=5"])
    assert refused.returncode == 2
    assert "argparse.Namespace" in refused.stderr and str(checkpoint) in refused.stderr
    assert "Traceback" not in refused.stderr

    fresh = run_cli(["-m", "ulysses_pro", "train", str(config), "max_steps=1", "overwrite_output_dir=true"])
    assert "resuming from" not in fresh.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learning_rat=1", "unknown key 'learning_rat'; did you mean 'learning_rate'?"),
        ("stage=ppo", "reward_model: stage ppo needs a reward model"),
        ("stage=dpo", "neat_packing: stage dpo scores whole sequences one per row"),
        ("dataset=nope", "dataset 'nope' is not defined"),
        ("sequence_parallel_size=2", "must divide the number of processes (1); launch with NPROC_PER_NODE=2"),
    ],
)
def test_errors_exit_2_with_a_message(tmp_path, override, message):
    result = run_cli(["-m", "ulysses_pro", "train", str(write_config(tmp_path)), override])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_make_tiny_model_loads_with_auto_classes(tmp_path):
    result = run_cli(
        [
            "-m",
            "ulysses_pro",
            "make-tiny-model",
            "--arch",
            "qwen2",
            "--out",
            str(tmp_path / "m"),
            "--num-kv-heads",
            "1",
        ]
    )
    assert result.returncode == 0, result.stderr
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert config.model_type == "qwen2" and config.num_key_value_heads == 1


@pytest.mark.parametrize(
    ("example", "metric"),
    [("dpo_lora", "rewards/accuracies"), ("kto_lora", "kl"), ("reward_model", "rewards/margins")],
)
def test_preference_examples_train(tmp_path, example, metric):
    """The shipped dpo / kto / rm example configs run as written (2 steps) and log their metrics."""
    out = tmp_path / example
    result = run_cli(
        [
            "-m",
            "ulysses_pro",
            "train",
            f"examples/{example}.yaml",
            "max_steps=2",
            "logging_steps=1",
            f"output_dir={out}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert metric in logs[0] and "loss" in logs[0]
    if example == "reward_model":
        assert (out / "value_head.safetensors").is_file()


@pytest.mark.parametrize(
    ("yaml_name", "ds_name"),
    [
        ("llama3_lora_dpo_ulysses.yaml", "ds_z3_ulysses_config_improved.json"),
        pytest.param("llama3_lora_dpo.yaml", "ds_z3_ulysses_config_enhanced.json", marks=pytest.mark.slow),
    ],
)
def test_the_original_ulysses_pro_command_runs_as_written(tmp_path, yaml_name, ds_name):
    """`python train_with_ulysses_pro.py --config_file ... --deepspeed ... --adjust-lr 3.0 --pref_beta 0.15`
    with the shipped files. What a CPU test must change is overridden on the command line: a tiny
    local model (its tokenizer is ChatML, so template chatml), SP=2 on two gloo ranks (the DeepSpeed
    JSON's 8, in a copy, must agree), fp32, a short sequence and two steps."""
    pytest.importorskip("deepspeed")
    from ulysses_pro.models.tiny import make_tiny_model

    from .cli_runner import REPO

    model = make_tiny_model("llama", tmp_path / "llama3-tiny")
    ds_config = json.loads((REPO / "examples" / "deepspeed" / ds_name).read_text())
    assert ds_config["sequence_parallel_size"] == 8 and ds_config["zero_optimization"]["stage"] == 3
    ds_config["sequence_parallel_size"] = 2
    ds_path = tmp_path / ds_name
    ds_path.write_text(json.dumps(ds_config))
    result = run_cli(
        [
            "train_with_ulysses_pro.py",
            "--config_file",
            str(REPO / "examples" / "train_lora" / yaml_name),
            "--deepspeed",
            str(ds_path),
            "--adjust-lr",
            "3.0",
            "--pref_beta",
            "0.15",
            *("--model_name_or_path", str(model), "--template", "chatml", "--bf16", "false"),
            *("--cutoff_len", "64", "--max_steps", "2", "--gradient_accumulation_steps", "1"),
            *("--output_dir", str(tmp_path / "out"), "--preprocessing_num_workers", "1"),
            *("--dataloader_num_workers", "0", "--plot_loss", "false"),
        ]
        + (["--sequence_parallel_size", "2"] if "ulysses" in yaml_name else []),
        {"NPROC_PER_NODE": "2"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "learning rate adjusted from 5e-06 to 1.5e-05" in result.stdout
    assert "dp 1 x sp 2" in result.stdout
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()

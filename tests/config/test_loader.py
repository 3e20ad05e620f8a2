"""Config loading: files, both override styles, legacy keys, and errors that name the fix."""

from __future__ import annotations

import json

import pytest

from ulysses_pro.config import ConfigError, load_config, parse_cli_tokens
from ulysses_pro.config.loader import _sequence_parallel_from_deepspeed
from ulysses_pro.config.parsing import Setting

BASE = """\
model_name_or_path: tiny:llama
stage: sft
do_train: true
dataset: demo_tasks
learning_rate: 1.0e-4
output_dir: {out}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(BASE.format(out=tmp_path / "out"))
    return path


def test_yaml_values_and_defaults(config_file):
    config = load_config(config_file)
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.finetuning.finetuning_type == "lora"  # LLaMA-Factory's default
    assert config.finetuning.lora_alpha is None and config.finetuning.lora_rank == 8
    assert config.model.trust_remote_code is False
    assert config.data.dataset_dir == "data"
    assert config.parallel.sequence_parallel_size == 1
    assert config.parallel.sequence_parallel_mode == "auto"  # the largest ulysses degree, ring for the rest


def test_both_override_styles_and_later_wins(config_file):
    config = load_config(
        config_file,
        [
            "--learning_rate",
            "3e-4",
            "cutoff_len=256",
            "--lr-scheduler-type=cosine",
            "--bf16",
            "pref_beta=0.15",
        ],
    )
    assert config.training.learning_rate == pytest.approx(3e-4)
    assert config.data.cutoff_len == 256
    assert str(config.training.lr_scheduler_type.value) == "cosine"
    assert config.training.bf16 is True
    assert config.finetuning.pref_beta == pytest.approx(0.15)
    later = load_config(config_file, ["learning_rate=1e-3", "--learning_rate", "2e-3"])
    assert later.training.learning_rate == pytest.approx(2e-3)


def test_config_file_given_in_the_overrides(config_file):
    config = load_config(None, ["--config_file", str(config_file), "--max_steps", "7"])
    assert config.training.max_steps == 7 and config.config_file == str(config_file)


def test_json_config(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model_name_or_path": "tiny:llama", "dataset": "x", "cutoff_len": 64}))
    assert load_config(path).data.cutoff_len == 64


def test_legacy_keys(config_file):
    config = load_config(
        config_file,
        ["warmup_ratio=0.1", "overwrite_output_dir=true", "group_by_length=false", "logging_dir=x"],
    )
    assert config.training.warmup_steps == pytest.approx(0.1)
    assert config.overwrite_output_dir is True
    assert config.training.train_sampling_strategy == "random"
    # group_by_length maps onto transformers 5's sampler key.
    grouped = load_config(config_file, ["group_by_length=true"])
    assert grouped.training.train_sampling_strategy == "group_by_length"
    with pytest.raises(ConfigError, match="train_sampling_strategy: 'batch_rebalance' is not one of random"):
        load_config(config_file, ["train_sampling_strategy=batch_rebalance"])


def test_unknown_key_names_line_and_closest(config_file):
    config_file.write_text(config_file.read_text() + "lerning_rate: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"cfg.yaml:7: unknown key 'lerning_rate'; did you mean 'learning_rate'"
    ):
        load_config(config_file)
    with pytest.raises(ConfigError, match=r"command line .*did you mean 'cutoff_len'"):
        load_config(None, ["cutof_len=3"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        (["lora_rank=abc"], r"lora_rank='abc' is not valid; expected a integer|lora_rank='abc' is not valid"),
        (["stage=ppo"], r"reward_model: stage ppo needs a reward model"),
        (["stage=dpo", "pref_loss=kto_pair"], r"pref_loss: 'kto_pair' is not one of sigmoid, hinge"),
        (["stage=dpo", "pref_beta=0"], r"pref_beta: must be positive"),
        (["stage=dpo", "dpo_label_smoothing=0.7"], r"dpo_label_smoothing: must be in \[0, 0.5\]"),
        (["stage=kto", "kto_rejected_weight=0"], r"kto_rejected_weight: must be positive"),
        (["stage=rm", "neat_packing=true"], r"neat_packing: stage rm scores whole sequences"),
        (["stage=banana"], r"stage: 'banana' is not one of pt, sft, rm, dpo, kto, ppo"),
        (["finetuning_type=qlora"], r"finetuning_type: 'qlora' is not one of full, freeze, lora"),
        (["bf16=true", "fp16=true"], r"fp16: bf16 and fp16 are both true"),
        (["sequence_parallel_mode=ring"], r"sequence_parallel_mode: 'ring' is not one of"),
        (["cutoff_len=2"], r"cutoff_len: must be at least 4"),
        (["neat_packing=true", "packing=false"], r"neat_packing needs packing"),
        (
            ["quantization_bit=4"],
            r"quantization_bit=4 is a LLaMA-Factory option Ulysses Pro does not support",
        ),
        (["dataset=null"], r"dataset: required when do_train is true"),
        (["freeze_trainable_layers=0"], r"freeze_trainable_layers: 0 trains nothing"),
        (["neftune_noise_alpha=-1"], r"neftune_noise_alpha: must be positive"),
        (["val_size=5", "eval_dataset=x"], r"val_size: val_size and eval_dataset are both set"),
        (["preprocessing_num_workers=0"], r"preprocessing_num_workers: must be a positive integer"),
        (["streaming=true", "max_steps=5", "tokenized_path=x"], r"tokenized_path: a streamed dataset"),
        (["streaming=true", "max_steps=5", "buffer_size=0"], r"buffer_size: must be a positive number"),
    ],
)
def test_invalid_values_name_the_key(config_file, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(config_file, override)


def test_sequence_parallel_keys(config_file):
    config = load_config(
        config_file, ["sequence_parallel_size=4", "--sequence_parallel_mode", "hybrid", "ulysses_degree=2"]
    )
    assert (config.parallel.sequence_parallel_size, config.parallel.sequence_parallel_mode) == (4, "hybrid")
    assert config.parallel.ulysses_degree == 2
    with pytest.raises(ConfigError, match=r"sequence_parallel_size: must be >= 1"):
        load_config(config_file, ["sequence_parallel_size=0"])


def test_sequence_parallel_size_from_deepspeed_json(config_file, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"sequence_parallel_size": 1, "train_micro_batch_size_per_gpu": "auto"}))
    settings = {"deepspeed": Setting(str(ds), "cfg"), "sequence_parallel_size": Setting(1, "cfg")}
    _sequence_parallel_from_deepspeed(settings)  # agreement is accepted
    settings = {"deepspeed": Setting(str(ds), "cfg")}
    ds.write_text(json.dumps({"sequence_parallel_size": 4}))
    _sequence_parallel_from_deepspeed(settings)
    assert (
        settings["sequence_parallel_size"].value == 4
        and "ds.json" in settings["sequence_parallel_size"].origin
    )
    # Disagreement names both places.
    ds.write_text(json.dumps({"sequence_parallel_size": 4}))
    with pytest.raises(ConfigError, match=r"sequence_parallel_size=1 disagrees with .*ds.json"):
        load_config(config_file, ["--deepspeed", str(ds), "sequence_parallel_size=1"])


def test_bad_yaml_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage: sft\ndataset: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(path)


def test_cli_token_parsing():
    config_file, overrides = parse_cli_tokens(
        ["--adjust-lr", "--config_file", "c.yaml", "--debug", "pref_beta=0.15", "--lr", "3"]
    )
    assert config_file == "c.yaml"
    assert {k: v.value for k, v in overrides.items()} == {
        "adjust_lr": True,
        "debug": True,
        "pref_beta": 0.15,
        "lr": 3,
    }
    with pytest.raises(ConfigError, match="two config files"):
        parse_cli_tokens(["a.yaml", "b.yaml"])
    with pytest.raises(ConfigError, match="cannot read command-line argument 'stray'"):
        parse_cli_tokens(["stray"])


@pytest.mark.parametrize(
    ("tokens", "env", "factor"),
    [
        (["--adjust-lr", "3.0"], {}, 3.0),
        (["--adjust-lr"], {}, 1.0),  # no value: the configured rate, logged as adjusted by 1.0
        (["--adjust-lr", "--debug"], {}, 1.0),
        (["adjust_lr=0.5"], {}, 0.5),
        ([], {"ULYSSES_ADJUST_LR": "4"}, 4.0),
        ([], {"ULYSSES_ADJUST_LR": ""}, 1.0),
        (["--adjust-lr", "2"], {"ULYSSES_ADJUST_LR": "4"}, 2.0),  # the command line wins
        ([], {}, None),
    ],
)
def test_adjust_lr_multiplies_the_configured_rate(config_file, monkeypatch, caplog, tokens, env, factor):
    monkeypatch.delenv("ULYSSES_ADJUST_LR", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level("INFO", logger="ulysses_pro.config.loader"):
        config = load_config(config_file, [*tokens, "learning_rate=2e-4"])
    assert config.pro.adjust_lr == factor
    assert config.training.learning_rate == pytest.approx(2e-4 * (factor or 1.0))
    if factor is not None:
        assert f"learning rate adjusted from 0.0002 to {2e-4 * factor:g}" in caplog.text
    else:
        assert "adjusted" not in caplog.text


def test_debug_switch_and_its_environment_variable(config_file, monkeypatch):
    monkeypatch.delenv("ULYSSES_DEBUG", raising=False)
    assert not load_config(config_file).pro.debug
    config = load_config(config_file, ["--debug", "--adjust-lr", "2.0", "--pref_beta", "0.15"])
    assert config.pro.debug and config.pro.guard_enabled and config.finetuning.pref_beta == 0.15
    assert config.training.debug == []  # transformers' own `debug` option untouched
    monkeypatch.setenv("ULYSSES_DEBUG", "1")
    assert load_config(config_file).pro.debug
    assert not load_config(config_file, ["debug=false"]).pro.debug
    # transformers' debug values still reach TrainingArguments
    assert load_config(config_file, ["debug=underflow_overflow"]).training.debug == ["underflow_overflow"]


def test_gradient_guard_keys_are_validated(config_file):
    config = load_config(config_file, ["gradient_guard=true", "gradient_guard_lr_boost=1.5"])
    assert config.pro.guard_enabled and config.pro.gradient_guard_lr_boost == 1.5
    with pytest.raises(ConfigError, match="unknown strategy nois"):
        load_config(config_file, ["gradient_guard_strategies=nois,clipping"])
    with pytest.raises(ConfigError, match="adjust_lr: -1.0 must be a positive factor"):
        load_config(config_file, ["adjust_lr=-1"])

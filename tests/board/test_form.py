"""The board's form <-> the config dict and YAML the CLI reads, and the command line it shows."""

from __future__ import annotations

import pytest
import yaml

from ulysses_pro.board.form import (
    BOARD_KEYS,
    FormError,
    command_line,
    config_from_form,
    form_defaults,
    form_from_config,
    from_yaml,
    to_yaml,
)
from ulysses_pro.config import load_config

MODEL = "tiny:llama?hidden_size=64&num_layers=2"


def _filled(**values):
    form = form_defaults()
    form.update(
        model_name_or_path=MODEL,
        template="chatml",
        dataset=["demo_tasks"],
        output_dir="/tmp/unused-board-run",
        precision="fp32",
    )
    form.update(values)
    return form


def test_a_filled_form_becomes_the_cli_keys_and_loads():
    config = config_from_form(
        _filled(
            finetuning_type="full",
            sequence_parallel_size="2",
            nproc=2,
            cutoff_len=96.0,
            max_samples="",
            lora_alpha="",
            extra="val_size: 0.1\n",
        )
    )
    assert config["model_name_or_path"] == MODEL and config["dataset"] == "demo_tasks"
    assert config["sequence_parallel_size"] == 2 and config["cutoff_len"] == 96
    # blank optional numbers stay out (the CLI's default), LoRA keys only for LoRA runs
    assert "max_samples" not in config and "lora_rank" not in config and "lora_alpha" not in config
    assert config["val_size"] == 0.1 and all(config[k] == v for k, v in BOARD_KEYS.items())
    loaded = load_config(config)
    assert loaded.parallel.sequence_parallel_size == 2 and loaded.data.cutoff_len == 96


@pytest.mark.parametrize(
    "precision, keys",
    [("fp32", {}), ("bf16", {"bf16": True}), ("fp16", {"fp16": True}), ("pure_bf16", {"bf16": True, "pure_bf16": True})],
)
def test_precision_choices_write_their_keys_and_read_back(precision, keys):
    config = config_from_form(_filled(precision=precision))
    assert {k: config[k] for k in ("bf16", "fp16", "pure_bf16") if k in config} == keys
    assert form_from_config(config)["precision"] == precision


def test_engines_write_deepspeed_or_fsdp_and_read_back():
    deepspeed = config_from_form(_filled(engine="deepspeed", deepspeed="examples/deepspeed/z3.json"))
    assert deepspeed["deepspeed"] == "examples/deepspeed/z3.json" and "fsdp" not in deepspeed
    fsdp = config_from_form(_filled(engine="fsdp", fsdp="full_shard auto_wrap offload"))
    assert fsdp["fsdp"] == "full_shard auto_wrap offload" and "deepspeed" not in fsdp
    assert form_from_config(fsdp)["engine"] == "fsdp" and form_from_config(deepspeed)["engine"] == "deepspeed"
    with pytest.raises(FormError, match="DeepSpeed JSON"):
        config_from_form(_filled(engine="deepspeed", deepspeed=""))


def test_form_to_config_to_form_keeps_every_value():
    form = _filled(
        stage="dpo",
        pref_loss="simpo",
        pref_beta=0.2,
        finetuning_type="lora",
        lora_rank=16,
        lora_alpha="32",
        sequence_parallel_size=4,
        sequence_parallel_mode="hybrid",
        ulysses_degree="2",
        nproc=8,
        precision="bf16",
        packing=False,
        extra="seed: 7\nwarmup_steps: 0.1\n",
    )
    config = config_from_form(form)
    again = form_from_config(config, nproc=8)
    assert config_from_form(again) == config
    assert again["pref_loss"] == "simpo" and again["lora_alpha"] == 32 and again["nproc"] == 8
    assert yaml.safe_load(again["extra"]) == {"seed": 7, "warmup_steps": 0.1}


def test_config_to_form_to_config_keeps_every_key_including_ones_without_a_field():
    config = {
        "model_name_or_path": MODEL,
        "stage": "sft",
        "finetuning_type": "freeze",
        "freeze_trainable_layers": 1,
        "dataset": "demo_tasks,demo_chat",
        "cutoff_len": 128,
        "sequence_parallel_size": 2,
        "bf16": True,
        "pref_beta": 0.3,  # a dpo key on an sft run: no field shows it, so it stays in the extra keys
        "neat_packing": True,
        "lr_scheduler_type": "cosine",
        **BOARD_KEYS,
    }
    form = form_from_config(config)
    assert form["dataset"] == ["demo_tasks", "demo_chat"] and form["precision"] == "bf16"
    assert form["nproc"] == 2  # no header: one process per SP rank
    back = config_from_form(form)
    assert {k: back[k] for k in config} == config
    # keys the config left out are written with the CLI's own defaults, so the run is the same
    assert load_config(back).data.cutoff_len == 128
    assert back["learning_rate"] == load_config(config).training.learning_rate


def test_yaml_carries_the_process_count_in_its_command_comment():
    config = config_from_form(_filled(sequence_parallel_size=2))
    text = to_yaml(config, 2, "/runs/a/webui_config.yaml")
    assert "#   NPROC_PER_NODE=2 ulysses-pro train /runs/a/webui_config.yaml" in text
    assert from_yaml(text) == (config, 2)
    assert from_yaml("stage: sft\n") == ({"stage": "sft"}, None)
    assert command_line("cfg.yaml", 1) == "ulysses-pro train cfg.yaml"


def test_bad_form_values_are_one_line_errors_naming_the_field():
    with pytest.raises(FormError, match=r"Cutoff length \(tokens\) \(cutoff_len\): 'long' is not a whole number"):
        config_from_form(_filled(cutoff_len="long"))
    with pytest.raises(FormError, match="extra keys: cutoff_len has a field of its own"):
        config_from_form(_filled(extra="cutoff_len: 9"))
    with pytest.raises(FormError, match="extra keys: not YAML"):
        config_from_form(_filled(extra="a: [1"))
    with pytest.raises(FormError, match="expected a YAML mapping"):
        from_yaml("- 1\n- 2\n")


def test_save_then_load_through_the_board_gives_the_same_form(tmp_path):
    from ulysses_pro.board.actions import Board

    board = Board(tmp_path / "runs")
    form = config_from_form(_filled(sequence_parallel_size=2, nproc=4, extra="seed: 3\n"))
    values = form_from_config(form, nproc=4)
    path = tmp_path / "saved" / "run.yaml"
    assert board.save(values, str(path)) == f"saved {path}"
    assert load_config(str(path)).parallel.sequence_parallel_size == 2  # the CLI reads the file as is
    loaded, note = board.load(str(path))
    assert note == f"loaded {path}" and loaded == values
    with pytest.raises(FormError, match="give the file"):
        board.save(values, " ")

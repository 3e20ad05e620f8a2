"""Every training config of LLaMA-Factory's examples/ is accepted, or refused by a message that
names one of its keys: never `unknown key`. The fixture holds each config's keys and values (our
own listing, taken from LLaMA-Factory main at ff6d4d1: the examples/**/*.yaml with stage and
do_train)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.config.llamafactory_keys import LLAMAFACTORY_DEFAULTS
from ulysses_pro.data.errors import DataError
from ulysses_pro.data.templates import check_template_name

EXAMPLES = json.loads((Path(__file__).parent / "fixtures/llamafactory_examples.json").read_text())["configs"]


def _load(name: str, tmp_path: Path):
    keys = dict(EXAMPLES[name], output_dir=str(tmp_path / "out"))
    if "deepspeed" in keys:  # a file of LLaMA-Factory's tree: a ZeRO config of our own stands in
        (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
        keys["deepspeed"] = str(tmp_path / "ds.json")
    try:
        config = load_config(keys)
        check_template_name(config.data.template)  # what the data step would stop on
        return None
    except (ConfigError, DataError) as err:
        return str(err)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_llamafactory_training_example_is_accepted_or_refused_by_name(name, tmp_path):
    message = _load(name, tmp_path)
    if message is not None:
        assert "unknown key" not in message, message
        assert any(f"{key}=" in message or f"{key}:" in message for key in EXAMPLES[name]), message


def test_llamafactory_keys_at_their_default_are_accepted_and_otherwise_named(tmp_path):
    base = {"model_name_or_path": "tiny:llama", "output_dir": str(tmp_path), "stage": "sft"}
    load_config({**base, "use_galore": False, "galore_rank": 16, "ray_num_workers": 1, "tool_format": None})
    with pytest.raises(
        ConfigError, match=r"use_muon=True is a LLaMA-Factory option Ulysses Pro does not support"
    ):
        load_config({**base, "use_muon": True})
    # a command-line string compares with the typed default
    load_config(None, ["model_name_or_path=tiny:llama", f"output_dir={tmp_path}", "use_muon=false"])
    assert {"use_galore", "ppo_epochs", "tensor_model_parallel_size"} <= set(LLAMAFACTORY_DEFAULTS)


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn_interface") is not None, reason="FlashAttention-3 here"
)
def test_cheap_llamafactory_keys_take_effect(tmp_path):
    base = {"model_name_or_path": "tiny:llama", "output_dir": str(tmp_path), "stage": "sft"}
    assert load_config({**base, "disable_shuffling": True}).training.train_sampling_strategy == "sequential"
    assert load_config({**base, "fsdp": ["full_shard", "auto_wrap"]}).fsdp.reshard_after_forward  # a YAML list
    with pytest.raises(ConfigError, match=r"flash_attn: fa3 needs FlashAttention-3 .* not installed"):
        load_config({**base, "flash_attn": "fa3"})

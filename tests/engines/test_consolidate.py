"""`ulysses-pro convert`: a sharded checkpoint (FSDP2 or ZeRO-3) becomes a Hugging Face folder whose
weights are the ones the run trained."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ulysses_pro.engines.consolidate import CheckpointError, convert_checkpoint

from ..launcher import run_ranks
from ..train.harness import ZERO3, parallel_keys, run_training
from ..train.test_sequence_parallel import DATA, case_keys
from .test_fsdp2 import _train_sharded


def test_the_last_fsdp2_checkpoint_converts_to_the_final_model(tmp_path, checkpointed_run):
    """checkpoint-4 of a 4-step run holds the final weights: converted through the CLI, they equal the
    folder the run's final save gathered, and plain transformers gives equal logits from both."""
    from transformers import AutoModelForCausalLM

    run_dir, _ = checkpointed_run
    out = tmp_path / "hf"
    done = subprocess.run(
        [sys.executable, "-m", "ulysses_pro", "convert", str(run_dir / "checkpoint-4"), str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    converted, final = (
        load_file(str(out / "model.safetensors")),
        load_file(str(run_dir / "model.safetensors")),
    )
    assert converted.keys() == final.keys()
    assert all((converted[name] == final[name]).all() for name in final)
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    logits = [AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids).logits for folder in (out, run_dir)]
    assert torch.equal(*logits)
    assert (out / "tokenizer.json").is_file()


def test_a_lora_checkpoint_converts_to_an_adapter_folder(tmp_path):
    keys = case_keys(
        tmp_path,
        "lora",
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        fsdp="full_shard",
        finetuning_type="lora",
        **parallel_keys(2, "ulysses"),
    )
    run_ranks(_train_sharded, 2, keys)
    out = convert_checkpoint(tmp_path / "lora" / "checkpoint-2", tmp_path / "adapter")
    converted = load_file(str(out / "adapter_model.safetensors"))
    final = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert converted.keys() == final.keys() and all((converted[k] == final[k]).all() for k in final)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_a_folder_that_is_not_a_sharded_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="neither FSDP2 shards"):
        convert_checkpoint(tmp_path, tmp_path / "out")


def _zero3_run(rank, world_size, keys):
    run_training(**keys)


@pytest.mark.slow  # 57 s; the FSDP2 and LoRA conversions run by default, ZeRO-3 training in test_deepspeed
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the [deepspeed] extra")
def test_a_zero3_checkpoint_converts_to_the_model_one_process_trains(tmp_path):
    """ZeRO-3 at SP=2 on 2 ranks, checkpointed after its 2 steps: the converted checkpoint is the
    model one process trains (to Adam's rounding, as in tests/engines/test_fsdp2.py)."""
    from ulysses_pro.models.tiny import make_tiny_model

    config = tmp_path / "zero3.json"
    config.write_text(json.dumps(ZERO3))
    common = {
        "model_name_or_path": str(make_tiny_model("llama", tmp_path / "tiny", seed=0)),
        "dataset": "demo_chat",
        "dataset_dir": DATA,
        "max_samples": 16,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "cutoff_len": 64,
    }
    run_training(**common, output_dir=str(tmp_path / "ref"))
    zero3 = {"sequence_parallel_size": 2, "deepspeed": str(config), "save_strategy": "steps", "save_steps": 2}
    run_ranks(_zero3_run, 2, {**common, **zero3, "output_dir": str(tmp_path / "z3")})
    out = convert_checkpoint(tmp_path / "z3" / "checkpoint-2", tmp_path / "hf")
    reference, converted = (
        load_file(str(tmp_path / "ref" / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert reference.keys() == converted.keys()
    errors = {name: float((converted[name] - w).norm() / w.norm()) for name, w in reference.items()}
    assert max(errors.values()) <= 1e-4, errors

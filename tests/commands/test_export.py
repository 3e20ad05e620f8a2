"""`ulysses-pro export`: LoRA merged into the base, a folder transformers loads with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from ulysses_pro.cli import main
from ulysses_pro.models.tiny import make_tiny_model


def lora_adapter(base_dir, adapter_dir, with_value_head: bool = False):
    """A LoRA adapter on every linear layer with random (non-zero) B, so merging changes the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    peft_model.save_pretrained(str(adapter_dir))
    if with_value_head:
        from safetensors.torch import save_file

        hidden = model.config.hidden_size
        save_file(
            {"v_head.summary.weight": torch.randn(1, hidden), "v_head.summary.bias": torch.zeros(1)},
            str(adapter_dir / "value_head.safetensors"),
        )


def write_export_config(tmp_path, base_dir, adapter_dir, **keys) -> str:
    config = {
        "model_name_or_path": str(base_dir),
        "adapter_name_or_path": str(adapter_dir),
        "template": "chatml",
        "finetuning_type": "lora",
        "export_dir": str(tmp_path / "merged"),
        "export_size": 0.002,  # 2 MB shards: the tiny model spans several
        **keys,
    }
    path = tmp_path / "export.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()))
    return str(path)


def test_export_merges_lora_into_sharded_safetensors_with_equal_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = make_tiny_model("llama", tmp_path / "base")
    adapter_dir = tmp_path / "adapter"
    lora_adapter(base_dir, adapter_dir, with_value_head=True)
    assert main(["export", write_export_config(tmp_path, base_dir, adapter_dir)]) == 0
    merged_dir = tmp_path / "merged"
    index = json.loads((merged_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert (merged_dir / "value_head.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    assert tokenizer.chat_template and tokenizer.padding_side == "left"

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ids = torch.tensor([tokenizer.encode("Count from 3 to 9. 3 4 5 6 7 8 9")])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)(input_ids=ids).logits
    assert (expected - plain).abs().max() > 1e-2  # the adapter matters
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"export_dir": None}, "export needs export_dir"),
        ({"export_device": "tpu"}, "export_device: 'tpu'; expected cpu or auto"),
        ({"export_legacy_format": True}, "export_legacy_format: true"),
    ],
)
def test_export_refuses_bad_keys_in_one_line(tmp_path, capsys, keys, message):
    base_dir = make_tiny_model("llama", tmp_path / "base")
    config = write_export_config(tmp_path, base_dir, tmp_path / "none", finetuning_type="full", **keys)
    config_text = (
        (tmp_path / "export.yaml").read_text().replace(f'adapter_name_or_path: "{tmp_path / "none"}"\n', "")
    )
    (tmp_path / "export.yaml").write_text(config_text)
    assert main(["export", config]) == 2
    assert message in capsys.readouterr().err

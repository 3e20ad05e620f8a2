"""A sharded training checkpoint (FSDP2's `torch.distributed.checkpoint` shards, or DeepSpeed ZeRO's
partitions) turned into a Hugging Face folder that `from_pretrained` loads, on one process.

A full fine-tuning checkpoint becomes a model folder (safetensors, the config and tokenizer the
checkpoint holds; a reward model's or PPO critic's head also as `value_head.safetensors` in
LLaMA-Factory's key names); a LoRA checkpoint becomes an adapter folder (`adapter_config.json`,
`adapter_model.safetensors` with PEFT's key names). Weights keep the dtype they were trained in
(FSDP2 and ZeRO keep fp32 masters) unless a dtype is asked for.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..models.value_head import VALUE_HEAD_FILE
from .fsdp2 import SHARDED_FOLDER

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# What a checkpoint folder holds besides weights that a model folder needs too.
CARRIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
# Our value head's parameter names -> LLaMA-Factory's (models/value_head.py).
VALUE_HEAD_KEYS = {"v_head.weight": "v_head.summary.weight", "v_head.bias": "v_head.summary.bias"}


class CheckpointError(ValueError):
    """The folder is not a checkpoint this can convert (the message says what was found)."""


def checkpoint_kind(checkpoint: Path) -> str:
    """'fsdp2' or 'zero' (or CheckpointError naming what is missing)."""
    if (checkpoint / SHARDED_FOLDER / ".metadata").is_file():
        return "fsdp2"
    if (checkpoint / "latest").is_file() or any(checkpoint.glob("global_step*")):
        return "zero"
    raise CheckpointError(
        f"{checkpoint}: neither FSDP2 shards ({SHARDED_FOLDER}/.metadata) nor a DeepSpeed ZeRO checkpoint "
        "(latest, global_step*/) is here; a checkpoint of a run without sharding is already a model folder"
    )


def _fsdp2_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as scratch:
        whole = os.path.join(scratch, "state.pt")
        dcp_to_torch_save(str(checkpoint / SHARDED_FOLDER), whole)
        state = torch.load(whole, weights_only=True)
    return state["model"]


def _zero_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint)))


def consolidated_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every parameter of the checkpointed model, whole, on the host, under the model's own names."""
    kind = checkpoint_kind(checkpoint)
    logger.info("reading the %s shards of %s", kind, checkpoint)
    return _fsdp2_state(checkpoint) if kind == "fsdp2" else _zero_state(checkpoint)


def _adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's saved names: the adapter's tensors without the adapter name ('default')."""
    return {name.replace(".default", ""): tensor for name, tensor in state.items() if "lora_" in name}


def _take_value_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The value head's tensors, out of `state`, under LLaMA-Factory's names (a LoRA model's are
    below `base_model.model.`)."""
    head = {}
    for name in list(state):
        ours = next((key for key in VALUE_HEAD_KEYS if name == key or name.endswith("." + key)), None)
        if ours is not None:
            head[VALUE_HEAD_KEYS[ours]] = state.pop(name).contiguous()
    return head


def _write_model(state: dict[str, torch.Tensor], checkpoint: Path, output: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    head = _take_value_head(state)
    config = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    missing = [name for name in missing if name not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint}: the shards do not fit {type(model).__name__} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.tie_weights()
    model.save_pretrained(output)
    if head:
        save_file(head, str(output / VALUE_HEAD_FILE))


def convert_checkpoint(checkpoint: str | Path, output: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the Hugging Face folder of a sharded checkpoint to `output`; returns `output`."""
    checkpoint, output = Path(checkpoint), Path(output)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint folder")
    state = consolidated_state(checkpoint)
    if dtype is not None:
        state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in state.items()}
    output.mkdir(parents=True, exist_ok=True)
    if (checkpoint / ADAPTER_CONFIG).is_file():
        from safetensors.torch import save_file

        head = _take_value_head(state)
        adapter = _adapter_state(state)
        if not adapter:
            raise CheckpointError(
                f"{checkpoint}: {ADAPTER_CONFIG} is here but the shards hold no LoRA weights"
            )
        save_file(
            {name: t.contiguous() for name, t in adapter.items()}, str(output / "adapter_model.safetensors")
        )
        shutil.copy(checkpoint / ADAPTER_CONFIG, output / ADAPTER_CONFIG)
        if head:
            save_file(head, str(output / VALUE_HEAD_FILE))
    else:
        _write_model(state, checkpoint, output)
    for name in CARRIED_FILES:
        if (checkpoint / name).is_file() and not (output / name).exists():
            shutil.copy(checkpoint / name, output / name)
    logger.info("wrote %s", output)
    return output

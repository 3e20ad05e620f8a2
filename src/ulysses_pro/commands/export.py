"""`ulysses-pro export CONFIG.yaml [key=value ...]`: merge LoRA adapters into the base model and write
a Hugging Face folder (LLaMA-Factory's `llamafactory-cli export` keys).

The folder holds sharded safetensors (`export_size` GB per shard), the tokenizer as the template
fixed it (eos, pad, stop words; a chat template written from the LLaMA-Factory template when the
tokenizer has none), the processor configs of a vision-language model and, for reward models,
`value_head.safetensors`. Adapters are merged in fp32
and the result is cast to the base model's own dtype (or to bf16 / fp16 when those keys are set).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..config import ConfigError, load_config
from ..data.lf_template.chat import LfChatFormat
from ..data.lf_template.jinja import jinja_template
from ..data.multimodal.rows import copy_processor_files
from ..data.templates import chat_format
from ..models.kv_cache import set_kv_cache
from ..models.loader import adapter_paths, load_model, load_model_config, load_tokenizer
from ..models.value_head import VALUE_HEAD_FILE

logger = logging.getLogger(__name__)


def _export_dtype(config) -> torch.dtype:
    if getattr(config.training, "bf16", False):
        return torch.bfloat16
    if getattr(config.training, "fp16", False):
        return torch.float16
    stored = getattr(load_model_config(config.model), "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _value_head_source(config) -> Path | None:
    """The reward model's head: in the last adapter folder (LoRA) or the model folder (full)."""
    folders = [*reversed(adapter_paths(config.model)), config.model.model_name_or_path]
    return next((Path(f) / VALUE_HEAD_FILE for f in folders if (Path(f) / VALUE_HEAD_FILE).is_file()), None)


def export_model(config) -> Path:
    export = config.export
    if not export.export_dir:
        raise ConfigError("export needs export_dir: the folder the merged model is written to")
    if export.export_legacy_format:
        raise ConfigError(
            "export_legacy_format: true (pytorch_model.bin) is not written: transformers 5 saves safetensors only"
        )
    if export.export_device not in ("cpu", "auto"):
        raise ConfigError(f"export_device: {export.export_device!r}; expected cpu or auto")
    if export.export_size <= 0:
        raise ConfigError(f"export_size: {export.export_size}; expected a positive number of GB")
    model_args = config.model
    if not model_args.model_name_or_path or model_args.model_name_or_path.startswith("tiny:"):
        raise ConfigError("export needs model_name_or_path: a model folder or hub id")
    tokenizer = load_tokenizer(model_args)
    template = chat_format(tokenizer, config.data)
    dtype = _export_dtype(config)
    model = load_model(model_args, config.finetuning, tokenizer, config.training, is_trainable=False)
    if export.export_device == "auto" and torch.cuda.is_available():
        model = model.to("cuda")
    model = model.to(dtype).cpu()
    out = Path(export.export_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_kv_cache(model, True)  # training turned the KV cache off; inference wants it
    model.save_pretrained(str(out), max_shard_size=f"{max(1, round(export.export_size * 1000))}MB")
    if not getattr(tokenizer, "chat_template", None) and isinstance(template, LfChatFormat):
        tokenizer.chat_template = jinja_template(template.template, tokenizer)
    tokenizer.padding_side = "left"  # for batched generation, as LLaMA-Factory exports it
    tokenizer.save_pretrained(str(out))
    # A vision-language model loads as the same class only with its processors beside it.
    copied = copy_processor_files(model_args.model_name_or_path, out)
    if copied:
        logger.info("processor configs copied: %s", ", ".join(copied))
    head = _value_head_source(config)
    if head is not None:
        shutil.copyfile(head, out / VALUE_HEAD_FILE)
    logger.info(
        "exported %s%s to %s (%s%s)",
        model_args.model_name_or_path,
        f" + {', '.join(adapter_paths(model_args))}" if adapter_paths(model_args) else "",
        out,
        str(dtype).removeprefix("torch."),
        ", with the value head" if head is not None else "",
    )
    return out


def run(arguments: list[str]) -> int:
    export_model(load_config(None, arguments))
    return 0

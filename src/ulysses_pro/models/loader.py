"""Model + tokenizer loading and the full / freeze / LoRA parameter setup."""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from .kv_cache import set_kv_cache
from .multimodal.freezing import freeze_parts, lora_targets
from .vocabulary import (
    embedding_module_names,
    embedding_rows,
    extend_tokenizer,
    resize_embeddings,
    wants_resize,
)

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
_ATTN_IMPLEMENTATIONS = {
    "auto": None,
    "sdpa": "sdpa",
    "eager": "eager",
    "disabled": "eager",
    "fa2": "flash_attention_2",
    "fa3": "flash_attention_3",
}
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def parse_tiny_spec(spec: str) -> tuple[str, dict[str, int | float]]:
    """`tiny:llama?hidden_size=128&num_layers=4` -> ("llama", {"hidden_size": 128, "num_layers": 4});
    a value with a decimal point is a float (`tiny:gemma2?attn_logit_softcapping=5.0`)."""
    arch, _, query = spec[len(TINY_PREFIX) :].partition("?")
    sizes: dict[str, int | float] = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if value.isdigit():
            sizes[key] = int(value)
        elif re.fullmatch(r"\d+\.\d*", value):
            sizes[key] = float(value)
        else:
            raise ValueError(f"model_name_or_path={spec!r}: {item!r} should be key=<number>")
    return arch, sizes


def load_model_config(model_args):
    """The model's config (`config.json`, or a `tiny:` spec's) as the run would build it; no weights."""
    path = model_args.model_name_or_path
    if path.startswith(TINY_PREFIX):
        from .tiny import build_tiny_config
        from .tokenizer import load_builtin_tokenizer

        arch, sizes = parse_tiny_spec(path)
        sizes.setdefault("vocab_size", len(load_builtin_tokenizer()))
        return build_tiny_config(arch, **sizes)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        path,
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.hf_hub_token,
    )


def load_tokenizer(model_args):
    """The model's tokenizer; `tiny:<arch>` models use the tokenizer shipped with Ulysses Pro."""
    path = model_args.model_name_or_path
    if path.startswith(TINY_PREFIX):
        from .tokenizer import load_builtin_tokenizer

        tokenizer = load_builtin_tokenizer()
        extend_tokenizer(tokenizer, model_args)
        return tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path,
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.hf_hub_token,
        use_fast=model_args.use_fast_tokenizer,
    )
    if tokenizer.pad_token_id is None:
        # Padding is always masked out of the loss, so any id works; eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    added = extend_tokenizer(tokenizer, model_args)
    if added:
        logger.info("added %d tokens to the tokenizer; the embeddings grow to match", added)
    return tokenizer


def compute_dtype_for(training_args, finetuning_args=None) -> torch.dtype:
    """The dtype weights load in and mixed precision computes in (bf16, fp16, else fp32)."""
    if finetuning_args is not None and getattr(finetuning_args, "pure_bf16", False):
        return torch.bfloat16
    if getattr(training_args, "bf16", False):
        return torch.bfloat16
    if getattr(training_args, "fp16", False):
        return torch.float16
    return torch.float32


def auto_model_class(config):
    """transformers' auto class for this config: image-text-to-text for a vision-language model
    (its language model alone would drop the vision tower), else causal LM."""
    import transformers

    if getattr(config, "vision_config", None) is not None:
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


def load_model(
    model_args, finetuning_args, tokenizer, training_args, *, is_trainable: bool = True
) -> nn.Module:
    """Load (or build) the causal LM and mark which parameters train."""
    path = model_args.model_name_or_path
    attn = _ATTN_IMPLEMENTATIONS[model_args.flash_attn]
    if attn == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise ImportError(
                "flash_attn: fa2 needs the flash-attn package; install it or use sdpa"
            ) from None
    dtype = compute_dtype_for(training_args, finetuning_args)
    seed = getattr(training_args, "seed", 42)
    if path.startswith(TINY_PREFIX):
        from .tiny import build_tiny_model

        arch, overrides = parse_tiny_spec(path)
        if attn:
            overrides["attn_implementation"] = attn
        model = build_tiny_model(arch, tokenizer, seed=seed, **overrides)
        model = model.to(dtype)
    elif model_args.train_from_scratch:
        # LLaMA-Factory's train_from_scratch: the architecture from config.json, fresh weights.
        config = load_model_config(model_args)
        kwargs = {"attn_implementation": attn} if attn else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto_model_class(config).from_config(
                config, dtype=dtype, trust_remote_code=model_args.trust_remote_code, **kwargs
            )
    else:
        kwargs = {"attn_implementation": attn} if attn else {}
        model = auto_model_class(load_model_config(model_args)).from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=model_args.trust_remote_code,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.hf_hub_token,
            low_cpu_mem_usage=model_args.low_cpu_mem_usage,
            # Hub kernels off: transformers (>= 5.2x, with `kernels` installed, which it requires)
            # re-kernelizes on every train()/eval() switch and puts the class forward back on each
            # decorated layer, silently undoing the forwards this project installs (Gated DeltaNet
            # under SP and packing, the efficient RMSNorm). Measured: Qwen3.5 loaded from a folder
            # trained its linear-attention layers without SP (gradients 1e-1 off at SP=2).
            use_kernels=False,
            **kwargs,
        )
    if wants_resize(model_args):
        rows = resize_embeddings(model, tokenizer, seed)
        if rows:
            logger.info("embeddings resized by %d rows to %d (noisy-mean initialised)", rows, len(tokenizer))
    elif len(tokenizer) > embedding_rows(model):
        # A warning, not an error: data may never use the ids beyond the table (tiny test models).
        logger.warning(
            "the tokenizer has %d tokens but the model's embedding %d rows: an id beyond the table fails; "
            "set resize_vocab: true to grow it",
            len(tokenizer),
            embedding_rows(model),
        )
    # Packed rows rely on position-id restarts, which transformers honours only without a KV cache.
    set_kv_cache(model, False)
    # Adapter weights (LoRA A) are drawn from the RNG: seed them, so every process and every run
    # with the same seed starts from the same adapter (SP=N vs SP=1 comparisons depend on it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _apply_finetuning(model, model_args, finetuning_args, is_trainable)
    if is_trainable and not finetuning_args.pure_bf16:
        # Optimizer state and updates of trainable weights stay in fp32 (LLaMA-Factory's upcast);
        # pure_bf16 keeps them in bf16, as LLaMA-Factory does.
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
    if is_trainable and model_args.upcast_layernorm:
        _upcast_norms(model)
    _log_trainable(model)
    return model


def _upcast_norms(model: nn.Module) -> None:
    """LLaMA-Factory's `upcast_layernorm`: 1-D weights of modules named like a norm go to fp32. Their
    output is cast back to the input's dtype, so the next half-precision layer also works without
    autocast (pure_bf16), where an fp32 weight would otherwise promote it."""
    for module_name, module in model.named_modules():
        if not any(part in module_name.rsplit(".", 1)[-1] for part in ("norm", "ln")):
            continue
        upcast = False
        for param in module.parameters(recurse=False):
            if param.ndim == 1 and param.dtype != torch.float32:
                param.data = param.data.float()
                upcast = True
        if upcast:
            module.register_forward_hook(_output_in_input_dtype)


def _output_in_input_dtype(module: nn.Module, inputs: tuple, output):
    if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
        return output.to(inputs[0].dtype)
    return output


def adapter_paths(model_args) -> list[str]:
    """The comma-separated `adapter_name_or_path` folders, in loading order."""
    return [a.strip() for a in (model_args.adapter_name_or_path or "").split(",") if a.strip()]


def _apply_finetuning(model, model_args, finetuning_args, is_trainable: bool):
    kind = finetuning_args.finetuning_type
    adapters = adapter_paths(model_args)
    if adapters and kind != "lora":
        raise ValueError(f"adapter_name_or_path needs finetuning_type: lora, got {kind}")
    if not is_trainable:
        model.requires_grad_(False)
        return _load_adapters(model, adapters, resume_last=False)
    if kind == "full":
        model.requires_grad_(True)
        freeze_parts(model, finetuning_args)
        return model
    if kind == "freeze":
        _freeze(model, finetuning_args)
        freeze_parts(model, finetuning_args)
        return model
    return _lora(model, model_args, finetuning_args, adapters)


def _load_adapters(model, adapters: list[str], resume_last: bool):
    from peft import PeftModel

    for index, adapter in enumerate(adapters):
        last = index == len(adapters) - 1
        model = PeftModel.from_pretrained(model, adapter, is_trainable=resume_last and last)
        if not (resume_last and last):
            model = model.merge_and_unload()
    return model


def _linear_module_names(model: nn.Module) -> list[str]:
    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _modules_to_save(model, model_args, finetuning_args) -> list[str] | None:
    if finetuning_args.additional_target:
        return [m.strip() for m in finetuning_args.additional_target.split(",")]
    if wants_resize(model_args):
        return embedding_module_names(model)  # new token rows must train (LLaMA-Factory's rule)
    return None


def _lora(model, model_args, finetuning_args, adapters: list[str]):
    from peft import LoraConfig, get_peft_model

    if adapters:
        # create_new_adapter: every given adapter is merged and a fresh one trains on top;
        # otherwise the last one resumes training (LLaMA-Factory's rule).
        model = _load_adapters(model, adapters, resume_last=not finetuning_args.create_new_adapter)
        if hasattr(model, "peft_config"):
            return model
    target = finetuning_args.lora_target
    modules = _linear_module_names(model) if target == "all" else [t.strip() for t in target.split(",")]
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=finetuning_args.lora_rank,
        lora_alpha=finetuning_args.lora_alpha or 2 * finetuning_args.lora_rank,
        lora_dropout=finetuning_args.lora_dropout,
        target_modules=lora_targets(model, modules, finetuning_args),
        modules_to_save=_modules_to_save(model, model_args, finetuning_args),
        use_rslora=finetuning_args.use_rslora,
        use_dora=finetuning_args.use_dora,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(
            f"lora_target={target!r}: {err}; available Linear modules: {_linear_module_names(model)}"
        ) from None


def _freeze(model, finetuning_args) -> None:
    num_layers = model.config.get_text_config().num_hidden_layers
    n = finetuning_args.freeze_trainable_layers
    if abs(n) > num_layers:
        raise ValueError(f"freeze_trainable_layers={n} but the model has {num_layers} layers")
    layer_ids = set(range(num_layers - n, num_layers)) if n > 0 else set(range(-n))
    modules = finetuning_args.freeze_trainable_modules
    module_names = None if modules == "all" else [m.strip() for m in modules.split(",")]
    extra = [m.strip() for m in (finetuning_args.freeze_extra_modules or "").split(",") if m.strip()]
    matched_modules: set[str] = set()
    for name, param in model.named_parameters():
        match = _LAYER_INDEX.search(name)
        trainable = False
        if match and int(match.group(1)) in layer_ids:
            tail = name[match.end() :]
            trainable = module_names is None or any(tail.startswith(m + ".") for m in module_names)
            if trainable and module_names:
                matched_modules.update(m for m in module_names if tail.startswith(m + "."))
        if not match and any(f".{m}." in f".{name}" for m in extra):
            trainable = True
        param.requires_grad_(trainable)
    if module_names and set(module_names) - matched_modules:
        raise ValueError(
            f"freeze_trainable_modules: {sorted(set(module_names) - matched_modules)} match no parameter "
            f"of the trainable layers"
        )


def _log_trainable(model: nn.Module) -> None:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("trainable params: %d of %d (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))

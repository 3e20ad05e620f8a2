"""Which parts of a vision-language model train: LLaMA-Factory's `freeze_vision_tower` (default on),
`freeze_multi_modal_projector` (default on) and `freeze_language_model` (default off).

The parts are named as LLaMA-Factory registers its composite models (`model/model_utils/visual.py`):
for Qwen2-VL and Qwen2.5-VL the vision tower is `visual.patch_embed` + `visual.blocks`, the projector
`visual.merger`, the language model `language_model` + `lm_head`. Full and freeze fine-tuning leave
the frozen parts without gradient; LoRA puts no adapter in them (a regular expression over the
module paths, the effect of LLaMA-Factory's `patch_target_modules`).
"""

from __future__ import annotations

from torch import nn

# model_type -> (vision tower, projector, language model) module-path prefixes
COMPOSITE_PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "qwen2_vl": (("visual.patch_embed", "visual.blocks"), ("visual.merger",), ("language_model", "lm_head")),
    "qwen2_5_vl": (("visual.patch_embed", "visual.blocks"), ("visual.merger",), ("language_model", "lm_head")),
    # Qwen3-VL's tower also has a learned position table and the deepstack mergers (vision side).
    "qwen3_vl": (
        ("visual.pos_embed", "visual.patch_embed", "visual.blocks", "visual.deepstack_merger_list"),
        ("visual.merger",),
        ("language_model", "lm_head"),
    ),
    # Qwen3.5: the Qwen3-VL tower without deepstack mergers (the same part names otherwise).
    "qwen3_5": (
        ("visual.pos_embed", "visual.patch_embed", "visual.blocks"),
        ("visual.merger",),
        ("language_model", "lm_head"),
    ),
}


def frozen_prefixes(model_type: str, finetuning_args) -> tuple[str, ...]:
    """The module-path prefixes that must not train under these keys."""
    if model_type not in COMPOSITE_PARTS:
        return ()
    vision, projector, language = COMPOSITE_PARTS[model_type]
    frozen: tuple[str, ...] = ()
    if getattr(finetuning_args, "freeze_vision_tower", True):
        frozen += vision
    if getattr(finetuning_args, "freeze_multi_modal_projector", True):
        frozen += projector
    if getattr(finetuning_args, "freeze_language_model", False):
        frozen += language
    return frozen


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(f".{prefix}." in f".{name}." for prefix in prefixes)


def freeze_parts(model: nn.Module, finetuning_args) -> None:
    """Full / freeze fine-tuning: no gradient for the frozen parts."""
    prefixes = frozen_prefixes(model.config.model_type, finetuning_args)
    for name, param in model.named_parameters():
        if _within(name, prefixes):
            param.requires_grad_(False)


def lora_targets(model: nn.Module, modules: list[str], finetuning_args) -> list[str]:
    """LoRA's `target_modules`: the names as given, or, with frozen parts, the full paths of the
    Linear modules with those names outside them (PEFT matches a full path exactly; a bare name
    would also reach into the vision tower, whose MLP shares the language model's names)."""
    prefixes = frozen_prefixes(model.config.model_type, finetuning_args)
    if not prefixes:
        return modules
    wanted = set(modules)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in wanted
        and not _within(name, prefixes)
        and module is not model.get_output_embeddings()
    ]

"""A vision-language model in the shared workflow: its batches (`data.multimodal.collator`) and its
forward (`models.multimodal.vision_inputs`), wired for the run's SP layout."""

from __future__ import annotations

from ..config import ConfigError, RunConfig
from ..data.multimodal.collator import VisionCollator
from ..data.multimodal.rows import VISION_TEMPLATES, vision_settings
from ..models.multimodal.rope import MRopePositions
from ..models.multimodal.vision_inputs import install_vision_inputs, is_vision_language
from ..models.wrappers import unwrap_model
from ..parallel.mesh import SequenceParallelLayout

# Stages whose collators images join: one sequence per row (sft, pt) or a chosen and a rejected
# sequence sharing the pair's media (dpo).
VISION_STAGES = ("sft", "pt", "dpo")


def trains_vision(config: RunConfig, model) -> bool:
    return is_vision_language(unwrap_model(model)) and config.finetuning.stage in VISION_STAGES


def wire_vision_model(config: RunConfig, model, layout: SequenceParallelLayout | None) -> None:
    """Before any copy of the policy is made (DPO's frozen reference): its forward takes the
    vision collator's batches, encoding images split over the SP group."""
    if trains_vision(config, model):
        install_vision_inputs(unwrap_model(model), layout)


def vision_collator(config: RunConfig, model, tokenizer, collator, layout: SequenceParallelLayout | None):
    """The collator to train with: a VLM's batches carry images and videos; anything else keeps
    `collator`."""
    hf_model = unwrap_model(model)
    if not trains_vision(config, model):
        return collator
    settings = vision_settings(config.data, tokenizer)
    if settings is None:
        raise ConfigError(
            f"{config.origins.get('template', 'default')}: template: {config.data.template!r}: a "
            f"vision-language model trains with a vision template ({', '.join(VISION_TEMPLATES)})"
        )
    model_config = hf_model.config
    return VisionCollator(
        collator,
        settings.pixel_reader(),
        MRopePositions(model_config),
        model_config.image_token_id,
        model_config.video_token_id,
        share=(layout.sp_rank, layout.sp_size) if layout is not None else (0, 1),
    )


def text_only(samples: list) -> list:
    """Sample prompts that generation can show (a prompt with media needs its pixels)."""
    return [s for s in samples if not (getattr(s, "images", None) or getattr(s, "videos", None))]

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

# Stages whose rows go through the padding collator (one sequence per row), which images join.
VISION_STAGES = ("sft", "pt")


def wire_vision(config: RunConfig, model, tokenizer, collator, layout: SequenceParallelLayout | None):
    """The collator to train with: a VLM's token stages read images and videos (and the model
    encodes them split over the SP group); anything else keeps `collator`."""
    hf_model = unwrap_model(model)
    if not is_vision_language(hf_model) or config.finetuning.stage not in VISION_STAGES:
        return collator
    settings = vision_settings(config.data, tokenizer)
    if settings is None:
        raise ConfigError(
            f"{config.origins.get('template', 'default')}: template: {config.data.template!r}: a "
            f"vision-language model trains with a vision template ({', '.join(VISION_TEMPLATES)})"
        )
    install_vision_inputs(hf_model, layout)
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

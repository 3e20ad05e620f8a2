"""Checks of a run that need only the config, the model's `config.json` and the data folder.

They run before any dataset is tokenized or any weight is loaded, and, under the torchrun
relaunch, once in the launching process before any worker starts: a head count that does not
split, or a misspelt dataset name, stops in seconds with one line instead of after minutes of
tokenization on every rank.
"""

from __future__ import annotations

import os

from ..config import ConfigError, RunConfig
from ..data.errors import DataError
from ..data.multimodal.rows import MEDIA_STAGES, has_image_processor, media_datasets
from ..data.pipeline import check_sources, isolates_documents
from ..data.templates import chat_format
from ..models.attention import attention_heads
from ..models.families import VERIFYING_ENV, meta_model, packing_problems, sequence_parallel_problems
from ..models.loader import load_model_config, load_tokenizer
from ..models.multimodal import WIRED_VISION_FAMILIES
from ..models.recurrent import recurrent_mixers
from ..parallel.mesh import resolve_degrees
from .vision import VISION_STAGES


def _where(config: RunConfig, key: str) -> str:
    return config.origins.get(key, "default")


def trained_positions(text_config) -> int | None:
    """Positions the model's RoPE covers: max_position_embeddings, times a scaling factor if set."""
    limit = getattr(text_config, "max_position_embeddings", None)
    if limit is None:
        return None
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default") and rope.get("factor"):
        base = rope.get("original_max_position_embeddings") or limit
        return max(limit, int(base * float(rope["factor"])))
    return int(limit)


def check_model(config: RunConfig, model_config, world_size: int) -> None:
    """Sequence-parallel split, attention features and length against what the decoder allows."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    parallel = config.parallel
    size = parallel.sequence_parallel_size
    cutoff = config.data.cutoff_len
    if size > 1:
        if world_size % size:
            raise ConfigError(
                f"{_where(config, 'sequence_parallel_size')}: sequence_parallel_size: {size} must divide "
                f"the number of processes ({world_size}); launch with NPROC_PER_NODE={size} (or a multiple)"
            )
        check_family(config, model_config)  # first: a family without attention heads is refused here
        heads, kv_heads = attention_heads(text) or (size, size)
        try:
            resolve_degrees(size, parallel.sequence_parallel_mode, heads, kv_heads, parallel.ulysses_degree)
        except ValueError as err:
            key = "ulysses_degree" if parallel.ulysses_degree else "sequence_parallel_size"
            raise ConfigError(f"{_where(config, key)}: {err}") from None
        if getattr(text, "use_bidirectional_attention", False):
            raise ConfigError(
                f"{_where(config, 'sequence_parallel_size')}: sequence_parallel_size: {size}: the model "
                "attends bidirectionally (use_bidirectional_attention: true), which sequence-parallel "
                "attention (causal, with or without sliding windows) does not compute; use "
                "sequence_parallel_size: 1"
            )
    if size == 1:
        check_family(config, model_config)
    positions = trained_positions(text)
    if positions is not None and cutoff > positions:
        raise ConfigError(
            f"{_where(config, 'cutoff_len')}: cutoff_len: {cutoff} is above the {positions} positions the "
            f"model was trained for (max_position_embeddings, with its rope scaling); lower cutoff_len, "
            "or give the model's config.json a rope scaling (e.g. rope_type yarn with a factor) or a larger "
            "max_position_embeddings if you mean to extend its context"
        )


def packs_separate_documents(config: RunConfig) -> bool:
    """Whether the run packs several documents into a row and keeps them apart (the pipeline's rule)."""
    data, stage = config.data, config.finetuning.stage
    packing = data.packing if data.packing is not None else stage == "pt"
    packing = (packing or data.neat_packing) and stage in ("pt", "sft")
    return packing and isolates_documents(data, stage)


def check_family(config: RunConfig, model_config) -> None:
    """The decoder family against SP and packed documents (`models/families.py`), one line."""
    size = config.parallel.sequence_parallel_size
    packed = packs_separate_documents(config)
    if size == 1 and not packed:
        return
    model = meta_model(model_config, trust_remote_code=config.model.trust_remote_code)
    if model is not None and recurrent_mixers(model) and _zero3(config):
        # The mixers read their convolution's weight without calling it, and ZeRO-3 gathers a
        # module's partitioned weights only when the module itself is called.
        raise ConfigError(
            f"{_where(config, 'deepspeed')}: deepspeed ZeRO-3 with the recurrent layers of "
            f"{model_config.model_type} under sequence parallelism or packing is not supported yet; "
            "use ZeRO-2, or sequence_parallel_size: 1 without packing"
        )
    if size > 1:
        problems = sequence_parallel_problems(model_config, size, model)
        if problems:
            raise ConfigError(
                f"{_where(config, 'sequence_parallel_size')}: sequence_parallel_size: {size}: "
                + "; ".join(problems)
                + "; use sequence_parallel_size: 1 for this model"
            )
    if packed:
        problems = packing_problems(model_config, model)
        if problems:
            key = "neat_packing" if config.data.neat_packing else "packing"
            raise ConfigError(
                f"{_where(config, key)}: {key}: packed documents must train as if alone, but "
                + "; ".join(problems)
                + f"; set {key}: false"
            )


def check_media(config: RunConfig, model_config) -> None:
    """Image and video datasets against the model and stage, and a vision-language model against
    what is wired for it."""
    media = media_datasets(config.data)
    stage = config.finetuning.stage
    model_type = getattr(model_config, "model_type", "?")
    vision_language = getattr(model_config, "vision_config", None) is not None
    if media:
        where = f"{_where(config, 'dataset')}: dataset: {', '.join(media)}: images/videos columns"
        if not vision_language:
            raise ConfigError(
                f"{where}, but the model ({model_type}) has no vision tower; use a vision-language model "
                f"({', '.join(WIRED_VISION_FAMILIES)})"
            )
        if stage not in MEDIA_STAGES:
            raise ConfigError(
                f"{where}: stage {stage} with images or videos is not built yet ({' and '.join(MEDIA_STAGES)} are)"
            )
        if not has_image_processor(config.model.model_name_or_path):
            raise ConfigError(
                f"{_where(config, 'model_name_or_path')}: model_name_or_path: {config.model.model_name_or_path}: "
                "no image processor config (preprocessor_config.json or processor_config.json) to read "
                "images with; save the model's processor beside it (AutoProcessor.save_pretrained)"
            )
        for key in ("streaming", "tokenized_path"):
            if getattr(config.data, key):
                raise ConfigError(
                    f"{_where(config, key)}: {key} with images/videos is not built yet; remove {key}"
                )
    if vision_language and model_type not in WIRED_VISION_FAMILIES and not os.environ.get(VERIFYING_ENV):
        raise ConfigError(
            f"{_where(config, 'model_name_or_path')}: vision-language model {model_type}: its vision tower "
            f"and multimodal positions are not wired yet (covered: {', '.join(WIRED_VISION_FAMILIES)})"
        )
    if vision_language and stage not in VISION_STAGES and (
        config.parallel.sequence_parallel_size > 1 or packs_separate_documents(config)
    ):
        raise ConfigError(
            f"{_where(config, 'stage')}: stage {stage} with a vision-language model under sequence "
            f"parallelism or packing is not built yet ({', '.join(VISION_STAGES)} are)"
        )


def _zero3(config: RunConfig) -> bool:
    if not config.training.deepspeed:
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def preflight(config: RunConfig, world_size: int, tokenizer=None) -> None:
    """Raise ConfigError for what would otherwise fail after data and weights load. `tokenizer`:
    the run's, if it is loaded already (the template check loads it otherwise)."""
    if not config.model.model_name_or_path:
        return
    try:
        model_config = load_model_config(config.model)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{_where(config, 'model_name_or_path')}: model_name_or_path: "
            f"{config.model.model_name_or_path!r}: {str(err).splitlines()[0]}"
        ) from None
    check_model(config, model_config, world_size)
    try:
        if config.training.do_train or config.training.do_eval:
            check_sources(config.data, config.finetuning.stage)
            check_media(config, model_config)
        if config.data.template:
            # A tokenizer is cheap to load, and it decides whether the template's tokens exist.
            chat_format(tokenizer or load_tokenizer(config.model), config.data)
    except DataError as err:
        raise ConfigError(str(err)) from None

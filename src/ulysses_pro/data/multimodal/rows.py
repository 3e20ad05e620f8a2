"""Where media meets the rows: a row's files are attached to its conversation when it is read, and
its placeholders are expanded into visual tokens when it is encoded (by the template's rules)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ...parallel.reduce import IGNORE_INDEX
from ..errors import DataError, RowRef
from ..registry import load_dataset_specs
from .media import resolve_media
from .qwen_vl import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    VISION_END,
    VISION_START,
    ProcessorGeometry,
    VisionLimits,
    VisualInput,
    expand_placeholders,
    image_input,
    video_input,
)

logger = logging.getLogger(__name__)

MEDIA_KINDS = ("images", "videos")
# Stages whose rows carry media (their collators join images to sequences).
MEDIA_STAGES = ("sft", "dpo")
# Templates whose placeholder rules are implemented (LLaMA-Factory's mm_plugin of the same template).
VISION_TEMPLATES = {
    "qwen2_vl": "Qwen2-VL, Qwen2.5-VL",
    "qwen3_vl": "Qwen3-VL",
    "qwen3_vl_nothink": "Qwen3-VL",
    "qwen3_5": "Qwen3.5",
    "qwen3_5_nothink": "Qwen3.5",
    "qwen3_6": "Qwen3.6",
}
# Templates of LLaMA-Factory's `Qwen3VLPlugin` (Qwen3-VL, Qwen3.5, Qwen3.6): timed video frames
# (`qwen_vl.ProcessorGeometry.timed_frames`).
TIMED_VIDEO_TEMPLATES = ("qwen3_vl", "qwen3_vl_nothink", "qwen3_5", "qwen3_5_nothink", "qwen3_6")


def media_columns(spec) -> dict[str, str]:
    """The dataset's mapped media columns, by kind."""
    return {kind: spec.column(kind) for kind in MEDIA_KINDS if spec.column(kind)}


def media_datasets(data_args) -> list[str]:
    """The configured datasets whose rows carry images or videos."""
    names = [n for n in (data_args.dataset, data_args.eval_dataset) if n]
    return [
        spec.name
        for n in names
        for spec in load_dataset_specs(n, data_args.dataset_dir)
        if media_columns(spec)
    ]


def attach_media(item, row: dict, spec, data_args, ref: RowRef, stage: str):
    """The conversation with its row's image and video files (paths resolved and checked)."""
    columns = media_columns(spec)
    if not columns:
        return item
    if stage not in MEDIA_STAGES:
        raise DataError(
            f"dataset {spec.name!r}: {', '.join(columns)} columns: stage {stage} does not take media yet "
            f"({' and '.join(MEDIA_STAGES)} do)"
        )
    media_dir = Path(data_args.media_dir or data_args.dataset_dir)
    for kind, column in columns.items():
        setattr(item, kind, resolve_media(row.get(column), media_dir, ref, column))
    return item


@dataclass(frozen=True)
class VisionSettings:
    """What expanding a row's media needs: the keys' limits and the processors' geometry."""

    template: str
    limits: VisionLimits
    image: ProcessorGeometry
    video: ProcessorGeometry
    # The processors' saved configs (normalisation), for reading pixels; empty: transformers' defaults.
    image_config: dict = dataclasses.field(default_factory=dict, compare=False)
    video_config: dict = dataclasses.field(default_factory=dict, compare=False)

    def pixel_reader(self):
        from .pixels import PixelReader

        return PixelReader(self.image_config, self.video_config, self.image, self.video)


def _processor_config(model: str, kind: str) -> tuple[dict, str] | None:
    """A processor's saved config and the file it came from, found as transformers looks for it
    (a local folder or a hub id): `processor_config.json`'s nested entry first, then the video
    processor's own file (videos), then `preprocessor_config.json`."""
    from transformers.utils import cached_file

    def read(filename: str) -> dict | None:
        path = cached_file(model, filename, _raise_exceptions_for_missing_entries=False)
        return json.loads(Path(path).read_text()) if path else None

    nested = (read("processor_config.json") or {}).get(f"{kind}_processor")
    if nested:
        return nested, "processor_config.json"
    for filename in (["video_preprocessor_config.json"] if kind == "video" else []) + [
        "preprocessor_config.json"
    ]:
        config = read(filename)
        if config is not None:
            return config, filename
    return None


# The files that hold a model's processors (transformers 5 writes `processor_config.json`; earlier
# versions and hub models the per-processor files).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


def copy_processor_files(model: str, out: Path) -> list[str]:
    """Copy the model's processor configs (a local folder or hub id) into `out`; the names copied."""
    import shutil

    from transformers.utils import cached_file

    copied = []
    for name in PROCESSOR_FILES:
        path = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
        if path:
            shutil.copyfile(path, Path(out) / name)
            copied.append(name)
    return copied


def has_image_processor(model: str) -> bool:
    """Whether the model folder (or hub id) carries an image processor config."""
    return _processor_config(model, "image") is not None


def _geometry(model: str, kind: str, default: ProcessorGeometry) -> tuple[ProcessorGeometry, dict]:
    # (A timed-frames default keeps that rule with a saved config's numbers.)
    """A processor's patch, merge and pixel bounds as saved with the model (and the saved config),
    else transformers' class defaults (said in the log: the counts then assume them)."""
    found = _processor_config(model, kind)
    if found is None:
        logger.warning(
            "%s: no %s processor config; counting with transformers' Qwen2-VL defaults", model, kind
        )
        return default, {}
    config, _ = found
    size = config.get("size") or {}
    geometry = ProcessorGeometry(
        patch_size=config.get("patch_size", default.patch_size),
        merge_size=config.get("merge_size", default.merge_size),
        temporal_patch_size=config.get("temporal_patch_size", default.temporal_patch_size),
        min_pixels=config.get("min_pixels") or size.get("shortest_edge") or default.min_pixels,
        max_pixels=config.get("max_pixels") or size.get("longest_edge") or default.max_pixels,
        timed_frames=default.timed_frames,
    )
    return geometry, config


def vision_settings(data_args, tokenizer) -> VisionSettings | None:
    """For a vision template: the limits from the config and the geometry of the processors saved
    with the model (found as transformers finds them), else transformers' Qwen2-VL defaults. None
    for a text template."""
    if data_args.template not in VISION_TEMPLATES:
        return None
    model = str(getattr(tokenizer, "name_or_path", "") or ".")
    limits = VisionLimits.of(data_args)
    image, image_config = _geometry(model, "image", ProcessorGeometry())
    timed = data_args.template in TIMED_VIDEO_TEMPLATES
    video_default = ProcessorGeometry.qwen3_video_defaults() if timed else ProcessorGeometry.video_defaults()
    video, video_config = _geometry(model, "video", video_default)
    return VisionSettings(data_args.template, limits, image, video, image_config, video_config)


def expand_media(conversation, settings: VisionSettings | None) -> tuple[object, list[VisualInput], list[VisualInput]]:
    """The conversation with each placeholder replaced by its visual tokens, and its images and
    videos as the batch will read them (each list in placeholder order)."""
    if not (conversation.images or conversation.videos):
        return conversation, [], []
    ref = conversation.ref
    if settings is None:
        covered = ", ".join(f"{name} ({models})" for name, models in VISION_TEMPLATES.items())
        raise DataError.at(ref, f"images/videos need a vision template; covered so far: template {covered}")
    images = [image_input(path, settings.image, settings.limits, ref) for path in conversation.images]
    videos = [video_input(path, settings.video, settings.limits, ref) for path in conversation.videos]
    messages = expand_placeholders(conversation.messages, images, videos, settings.image, ref)
    return dataclasses.replace(conversation, messages=messages), images, videos


def expand_pair_media(pair, settings: VisionSettings | None):
    """A preference pair's prompt with its placeholders expanded (the answers take none), and its
    images and videos."""
    if not (pair.images or pair.videos):
        return pair, [], []
    expanded, images, videos = expand_media(pair.conversation(""), settings)
    return dataclasses.replace(pair, prompt=expanded.messages[:-1]), images, videos


def fit_whole(tokens: int, cutoff_len: int, ref: RowRef) -> None:
    """A row with media is never cut: a cut through its visual tokens (or past a placeholder) would
    leave the model more or fewer image features than pad tokens."""
    if tokens > cutoff_len:
        raise DataError.at(
            ref,
            f"with its visual tokens the row is {tokens} tokens, over cutoff_len {cutoff_len}; raise "
            "cutoff_len or lower image_max_pixels / video_max_pixels / video_maxlen",
        )


def mask_visual_tokens(tokenizer, input_ids: list[int], labels: list[int]) -> list[int]:
    """Labels with every vision token masked (also under `train_on_prompt`): they are the model's
    inputs, never its targets."""
    vision = {
        tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END)
    }
    return [IGNORE_INDEX if token in vision else label for token, label in zip(input_ids, labels)]


def with_media_columns(documents: list[dict]) -> list[dict]:
    """Every document with `images` and `videos` lists once any has media (rows are stored
    column-wise: one row's columns are every row's)."""
    kinds = {kind for document in documents for kind in MEDIA_KINDS if kind in document}
    if not kinds:
        return documents
    return [{**document, **{kind: document.get(kind, []) for kind in kinds}} for document in documents]


REF_SUFFIX = "_refs"


class MediaTable:
    """A dataset's images and videos in one list; rows keep their indices (`images_refs`), and
    `attach` gives a row its `VisualInput`s back when the loader reads it."""

    def __init__(self, inputs: list[VisualInput]):
        self.inputs = inputs

    @classmethod
    def detach(cls, rows: list[dict]) -> tuple[MediaTable | None, list[dict]]:
        """The table and the rows with indices in place of their media (None: rows without media)."""
        if not rows or not any(kind in rows[0] for kind in MEDIA_KINDS):
            return None, rows
        inputs: list[VisualInput] = []
        detached = []
        for row in rows:
            row = dict(row)
            for kind in MEDIA_KINDS:
                if kind in row:
                    media = row.pop(kind)
                    row[kind + REF_SUFFIX] = list(range(len(inputs), len(inputs) + len(media)))
                    inputs.extend(media)
            detached.append(row)
        return cls(inputs), detached

    def attach(self, row: dict) -> dict:
        for kind in MEDIA_KINDS:
            if kind + REF_SUFFIX in row:
                row[kind] = [self.inputs[index] for index in row.pop(kind + REF_SUFFIX)]
        return row

"""A vision-language forward under sequence parallelism (the batch from `data.multimodal.collator`).

A forward pre-hook on the model's inner `*VLModel` (the module with `visual` and `language_model`)
turns the collator's keys into what the language model takes:
1. the vision tower encodes the images and video frame groups this rank owns
   (`parallel.work_split`: a video's temporal groups are encoded independently by these towers;
   all in one call, so that every rank calls it exactly once per forward, as ZeRO-3 and FSDP
   gather its weights collectively; a rank that owns none encodes one blank minimal item and adds
   it times zero, so DDP also sees a gradient for every vision weight on every rank);
2. the features of all ranks are gathered (`parallel.comm.gather_rows`, whose backward sums the
   gradient of every rank's tokens into the owner's), in batch order;
3. each visual token of this rank's shard takes its feature (`*_feature_index`) in the token
   embeddings (Qwen3-VL: and its deepstack features, which a pre-hook on the language model
   passes on, to be added to the first decoder layers' outputs);
4. the position ids become transformers' packed 4-row form: the 1-D text positions (document
   boundaries for attention) over M-RoPE's three rows.
Text-only forwards (generation, a model without the collator's keys) pass through untouched.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ...parallel.comm import gather_rows
from ...parallel.work_split import owners, time_pieces
from ..wrappers import unwrap_model

VISION_KEYS = (
    "vision_position_ids",
    "image_feature_index",
    "video_feature_index",
    "pixel_values",
    "pixel_values_videos",
    "image_grid_thw",
    "video_grid_thw",
    "second_per_grid_ts",
    "mm_token_type_ids",
)


def vision_language_model(model: nn.Module) -> nn.Module | None:
    """The inner module holding the vision tower and the language model, if this is a VLM."""
    for module in unwrap_model(model).modules():
        if hasattr(module, "visual") and hasattr(module, "language_model"):
            return module
    return None


def is_vision_language(model_or_config) -> bool:
    config = getattr(unwrap_model(model_or_config), "config", model_or_config)
    return getattr(config, "vision_config", None) is not None


def _merged(output) -> torch.Tensor:
    """One row per visual token: the merged features, then (Qwen3-VL) each deepstack level's,
    side by side, so that one gather moves them all."""
    deepstack = getattr(output, "deepstack_features", None) or []
    return torch.cat([output.pooler_output, *deepstack], dim=-1)


def _encode(module: nn.Module, pixels: torch.Tensor, grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The vision tower's features (`_merged`) of the given items, and for a rank with none, the
    zero-weight term of the blank item it encodes instead."""
    visual = module.visual
    dtype = next(visual.parameters()).dtype
    if grids.shape[0]:
        return _merged(visual(pixels.to(dtype), grid_thw=grids)), None
    merge = visual.spatial_merge_size
    blank = torch.zeros(merge * merge, pixels.shape[-1], dtype=dtype, device=pixels.device)
    out = _merged(visual(blank, grid_thw=torch.tensor([[1, merge, merge]], device=pixels.device)))
    return out[:0], out.sum() * 0


def _features(module: nn.Module, batch: dict, layout) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(every image's then every video's features in batch order, an idle rank's zero term, the
    number of image feature rows)."""
    image_grids, video_grids = batch["image_grid_thw"], batch["video_grid_thw"]
    rank, ranks = (layout.sp_rank, layout.sp_size) if layout is not None else (0, 1)
    # Images and each video's temporal groups, shared out as the collator shared their pixels.
    pieces = time_pieces(torch.cat([image_grids, video_grids]).tolist())
    owner = owners([h * w for _, _, h, w in pieces], ranks)
    # The collator sent this rank's images, then its video groups, each in batch order.
    pixels = torch.cat([batch["pixel_values"], batch["pixel_values_videos"]])
    mine = [(1, h, w) for (_, _, h, w), o in zip(pieces, owner) if o == rank]
    own, idle = _encode(module, pixels, torch.tensor(mine, dtype=torch.long, device=pixels.device).view(-1, 3))
    if not owner:
        return own, idle, 0  # no media in the batch, on any rank of the group
    gathered = gather_rows(own, layout.sp_group if layout is not None else None)
    # Rows arrive rank by rank, each rank's pieces in batch order; put them back in batch order.
    tokens = [h * w // module.visual.spatial_merge_size**2 for _, _, h, w in pieces]
    start_of, cursor = {}, 0
    for owning in range(ranks):
        for piece in (i for i, o in enumerate(owner) if o == owning):
            start_of[piece], cursor = cursor, cursor + tokens[piece]
    ordered = torch.cat([gathered[start_of[i] : start_of[i] + tokens[i]] for i in range(len(tokens))])
    images = sum(t for (item, _, _, _), t in zip(pieces, tokens) if item < image_grids.shape[0])
    return ordered, idle, images


def _vision_inputs(module: nn.Module, args: tuple, kwargs: dict, layout=None):
    if "vision_position_ids" not in kwargs:
        return None
    batch = {key: kwargs.pop(key) for key in VISION_KEYS if key in kwargs}
    input_ids = kwargs.pop("input_ids", None)
    if input_ids is None and args:
        input_ids, args = args[0], args[1:]
    embeds = module.get_input_embeddings()(input_ids)
    features, idle, images = _features(module, batch, layout)
    features = features.to(embeds.dtype)
    width = embeds.shape[-1]
    # Each visual token's row of the batch's features: images' rows first, then videos'.
    image_index, video_index = batch["image_feature_index"], batch["video_feature_index"]
    visual = (image_index >= 0) | (video_index >= 0)
    rows = torch.where(image_index >= 0, image_index, video_index + images)[visual]
    if bool(visual.any()):
        embeds = embeds.masked_scatter(visual.unsqueeze(-1), features[rows, :width])
    if features.shape[-1] > width:
        # Qwen3-VL: the deepstack levels are added to the first decoder layers' outputs at the
        # visual tokens of this shard; the language model takes them from its own pre-hook.
        levels = features.shape[-1] // width - 1
        module.language_model._ulysses_deepstack = (
            visual,
            [features[rows, width * (1 + level) : width * (2 + level)] for level in range(levels)],
        )
    # Every rank's backward must reach the gather's (a collective), also when its shard holds no
    # visual token: the features enter its loss times zero.
    anchor = features.sum() * 0 if idle is None else idle + features.sum() * 0
    kwargs["inputs_embeds"] = embeds + anchor.to(embeds.dtype)
    kwargs["input_ids"] = None
    text = kwargs["position_ids"]
    kwargs["position_ids"] = torch.cat([text.unsqueeze(0), batch["vision_position_ids"].permute(2, 0, 1)])
    return args, kwargs


def _deepstack_inputs(language_model: nn.Module, args: tuple, kwargs: dict):
    pending = language_model.__dict__.pop("_ulysses_deepstack", None)
    if pending is None:
        return None
    kwargs["visual_pos_masks"], kwargs["deepstack_visual_embeds"] = pending
    return args, kwargs


def install_vision_inputs(model: nn.Module, layout) -> None:
    """Hook the VLM's inner model (once; a later call updates the layout), and for a deepstack
    model (Qwen3-VL) its language model."""
    inner = vision_language_model(model)
    if inner is None:
        return
    for owner, name in ((inner, "_ulysses_vision_hook"), (inner.language_model, "_ulysses_deepstack_hook")):
        handle = getattr(owner, name, None)
        if handle is not None:
            handle.remove()

    def hook(module, args, kwargs):
        return _vision_inputs(module, args, kwargs, layout)

    inner._ulysses_vision_hook = inner.register_forward_pre_hook(hook, with_kwargs=True)
    if "deepstack_visual_embeds" in inspect.signature(inner.language_model.forward).parameters:
        inner.language_model._ulysses_deepstack_hook = inner.language_model.register_forward_pre_hook(
            _deepstack_inputs, with_kwargs=True
        )

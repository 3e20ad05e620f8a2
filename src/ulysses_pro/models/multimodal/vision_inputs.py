"""A vision-language forward under sequence parallelism (the batch from `data.multimodal.collator`).

A forward pre-hook on the model's inner `*VLModel` (the module with `visual` and `language_model`)
turns the collator's keys into what the language model takes:
1. the vision tower encodes the images and videos this rank owns (`parallel.work_split.owners`;
   all in one call, so that every rank calls it exactly once per forward, as ZeRO-3 and FSDP
   gather its weights collectively; a rank that owns none encodes one blank minimal item and adds
   it times zero, so DDP also sees a gradient for every vision weight on every rank);
2. the features of all ranks are gathered (`parallel.comm.gather_rows`, whose backward sums the
   gradient of every rank's tokens into the owner's), in batch order;
3. each visual token of this rank's shard takes its feature (`*_feature_index`) in the token
   embeddings;
4. the position ids become transformers' packed 4-row form: the 1-D text positions (document
   boundaries for attention) over M-RoPE's three rows.
Text-only forwards (generation, a model without the collator's keys) pass through untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from ...parallel.comm import gather_rows
from ...parallel.work_split import owners
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


def _encode(module: nn.Module, pixels: torch.Tensor, grids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The vision tower's merged features (one row per visual token) of the given items, and for a
    rank with none, the zero-weight term of the blank item it encodes instead."""
    visual = module.visual
    dtype = next(visual.parameters()).dtype
    if grids.shape[0]:
        return visual(pixels.to(dtype), grid_thw=grids).pooler_output, None
    merge = visual.spatial_merge_size
    blank = torch.zeros(merge * merge, pixels.shape[-1], dtype=dtype, device=pixels.device)
    out = visual(blank, grid_thw=torch.tensor([[1, merge, merge]], device=pixels.device)).pooler_output
    return out[:0], out.sum() * 0


def _features(module: nn.Module, batch: dict, layout) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(every image's then every video's features in batch order, an idle rank's zero term, the
    number of image feature rows)."""
    image_grids, video_grids = batch["image_grid_thw"], batch["video_grid_thw"]
    grids = torch.cat([image_grids, video_grids])
    rank, ranks = (layout.sp_rank, layout.sp_size) if layout is not None else (0, 1)
    owner = owners(grids.prod(-1).tolist(), ranks)
    # The collator sent this rank's images, then its videos, each in batch order: the same order.
    pixels = torch.cat([batch["pixel_values"], batch["pixel_values_videos"]])
    own, idle = _encode(module, pixels, grids[[i for i, o in enumerate(owner) if o == rank]])
    if not owner:
        return own, idle, 0  # no media in the batch, on any rank of the group
    gathered = gather_rows(own, layout.sp_group if layout is not None else None)
    # Rows arrive rank by rank, each rank's items in batch order; put them back in batch order.
    tokens = (grids.prod(-1) // module.visual.spatial_merge_size**2).tolist()
    start_of, cursor = {}, 0
    for owning in range(ranks):
        for item in (i for i, o in enumerate(owner) if o == owning):
            start_of[item], cursor = cursor, cursor + tokens[item]
    ordered = torch.cat([gathered[start_of[i] : start_of[i] + tokens[i]] for i in range(len(tokens))])
    return ordered, idle, sum(tokens[: image_grids.shape[0]])


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
    image_features, video_features = features[:images], features[images:]
    for key, table in (("image_feature_index", image_features), ("video_feature_index", video_features)):
        index = batch[key]
        at = index >= 0
        if bool(at.any()):
            embeds = embeds.masked_scatter(at.unsqueeze(-1), table[index[at]])
    # Every rank's backward must reach the gather's (a collective), also when its shard holds no
    # visual token: the features enter its loss times zero.
    anchor = features.sum() * 0 if idle is None else idle + features.sum() * 0
    kwargs["inputs_embeds"] = embeds + anchor.to(embeds.dtype)
    kwargs["input_ids"] = None
    text = kwargs["position_ids"]
    kwargs["position_ids"] = torch.cat([text.unsqueeze(0), batch["vision_position_ids"].permute(2, 0, 1)])
    return args, kwargs


def install_vision_inputs(model: nn.Module, layout) -> None:
    """Hook the VLM's inner model (once; a later call updates the layout)."""
    inner = vision_language_model(model)
    if inner is None:
        return
    handle = getattr(inner, "_ulysses_vision_hook", None)
    if handle is not None:
        handle.remove()

    def hook(module, args, kwargs):
        return _vision_inputs(module, args, kwargs, layout)

    inner._ulysses_vision_hook = inner.register_forward_pre_hook(hook, with_kwargs=True)

"""M-RoPE positions of one document, by the model class's own `get_rope_index`.

Qwen2-VL-style models give a visual token three positions (time, height, width) and let text
continue after the largest of them; the rule (and its video time spacing) changes between model
generations and transformers versions, so it is not rewritten here: the model class's own method is
called on a stand-in that carries only the config (the method reads `config` and the static
`get_vision_position_ids`, no weights). The collator calls this per packed document, before the
sequence is split.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch


def vision_language_base(config) -> type:
    """The base model class (`Qwen2_5_VLModel`, ...) that owns `get_rope_index` for this config."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    return MODEL_MAPPING[type(config)]


class MRopePositions:
    """(3, len) positions of one document's ids given its image and video grids (picklable)."""

    def __init__(self, config):
        self.config = config
        self.image_token_id = config.image_token_id
        self.video_token_id = config.video_token_id

    @functools.cached_property
    def _rule(self):
        base = vision_language_base(self.config)
        stand_in = SimpleNamespace(config=self.config)
        stand_in.get_vision_position_ids = functools.partial(base.get_vision_position_ids, stand_in)
        return functools.partial(base.get_rope_index, stand_in)

    def __getstate__(self) -> dict:
        return {"config": self.config, "image_token_id": self.image_token_id, "video_token_id": self.video_token_id}

    def __call__(
        self, input_ids: list[int], image_grids: list, video_grids: list, seconds_per_grid: list
    ) -> torch.Tensor:
        # Built on the host: the collator computes positions before the batch moves to a device.
        ids = torch.tensor([input_ids], dtype=torch.long, device="cpu")
        types = (ids == self.image_token_id).int() + 2 * (ids == self.video_token_id).int()
        positions, _ = self._rule(
            ids,
            mm_token_type_ids=types,
            image_grid_thw=torch.tensor(image_grids, dtype=torch.long, device="cpu").view(-1, 3) if image_grids else None,
            video_grid_thw=torch.tensor(video_grids, dtype=torch.long, device="cpu").view(-1, 3) if video_grids else None,
            second_per_grid_ts=torch.tensor(seconds_per_grid, device="cpu") if video_grids else None,
        )
        return positions[:, 0]

"""Images and videos in a chat turn (`ulysses-pro chat --image PATH`): each placeholder expanded to
its visual tokens as training expanded it, and the pixels and grids `generate` takes (the model's
own forward then places the features and computes M-RoPE)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.errors import RowRef
from ..data.formats import Conversation
from ..data.multimodal.media import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from ..data.multimodal.rows import VisionSettings, expand_media


@dataclass
class VisionTurns:
    """The media of a conversation so far: every turn's images and videos stay in the prompt."""

    settings: VisionSettings
    image_token_id: int
    video_token_id: int
    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)

    def expand(self, text: str, images: list[str], videos: list[str]) -> str:
        """The user's text with a placeholder per new file (put in front when the text has none,
        as LLaMA-Factory does) expanded to visual tokens; the files join the conversation."""
        missing_images = max(0, len(images) - text.count(IMAGE_PLACEHOLDER))
        missing_videos = max(0, len(videos) - text.count(VIDEO_PLACEHOLDER))
        text = IMAGE_PLACEHOLDER * missing_images + VIDEO_PLACEHOLDER * missing_videos + text
        turn = Conversation(
            [{"role": "user", "content": text}],
            RowRef("chat", len(self.images) + len(self.videos)),
            images=[Path(p) for p in images],
            videos=[Path(p) for p in videos],
        )
        expanded, new_images, new_videos = expand_media(turn, self.settings)
        self.images += new_images
        self.videos += new_videos
        return expanded.messages[0]["content"]

    def generate_inputs(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """What `generate` needs beside the ids for the media so far (nothing without media)."""
        if not (self.images or self.videos):
            return {}
        reader = self.settings.pixel_reader()
        device = ids.device
        inputs = {
            "mm_token_type_ids": (ids == self.image_token_id).int() + 2 * (ids == self.video_token_id).int()
        }
        if self.images:
            inputs["pixel_values"] = torch.cat([reader.pixels(item) for item in self.images]).to(device)
            inputs["image_grid_thw"] = torch.tensor([item.grid for item in self.images], device=device)
        if self.videos:
            inputs["pixel_values_videos"] = torch.cat([reader.pixels(item) for item in self.videos]).to(device)
            inputs["video_grid_thw"] = torch.tensor([item.grid for item in self.videos], device=device)
            inputs["second_per_grid_ts"] = torch.tensor([item.seconds_per_grid for item in self.videos])
        return inputs

    def clear(self) -> None:
        self.images, self.videos = [], []

"""Small image and video datasets written at test time (LLaMA-Factory's layout: a sharegpt json with
`images` / `videos` columns and its dataset_info.json entry), and a tiny Qwen2.5-VL folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# (width, height) of the images: different grids, one wider than tall, one taller than wide.
IMAGE_SIZES = [(56, 56), (84, 56), (56, 112), (112, 84)]


def write_video(path: Path, frames: int = 8, fps: int = 4, size: tuple[int, int] = (64, 48), seed: int = 0) -> None:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _turns(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def write_media_dataset(folder: Path, videos: bool = True) -> Path:
    """`media_demo`: rows with one image, two images, a video, an image and a video, and text only;
    `media_pairs`: preference pairs over the images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(IMAGE_SIZES):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index}.png")
    rows = [
        {"messages": _turns("<image>What is in the picture?", "A pattern of coloured dots."), "images": ["image0.png"]},
        {
            "messages": _turns("Compare <image> with <image>.", "The second one is taller than the first."),
            "images": ["image1.png", "image2.png"],
        },
        {"messages": _turns("Say hello.", "Hello there, nice to meet you."), "images": []},
        {"messages": _turns("<image>Describe it briefly.", "Noise, mostly."), "images": ["image3.png"]},
    ]
    if videos:
        write_video(folder / "clip0.mp4", seed=1)
        write_video(folder / "clip1.mp4", frames=12, size=(48, 64), seed=2)
        rows += [
            {"messages": _turns("<video>What happens?", "The dots flicker."), "videos": ["clip0.mp4"]},
            {
                "messages": _turns("<image>and<video>: same source?", "No, they differ."),
                "images": ["image0.png"],
                "videos": ["clip1.mp4"],
            },
        ]
    for row in rows:
        row.setdefault("images", [])
        row.setdefault("videos", [])
    (folder / "media_demo.json").write_text(json.dumps(rows, indent=1))
    info = {
        "media_demo": {
            "file_name": "media_demo.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images", "videos": "videos"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }
    pairs = [
        {
            "messages": [{"role": "user", "content": question}],
            "chosen": {"role": "assistant", "content": good},
            "rejected": {"role": "assistant", "content": bad},
            "images": images,
        }
        for question, good, bad, images in (
            ("<image>What is in the picture?", "Coloured dots.", "A cat on a sofa.", ["image0.png"]),
            ("Which is taller, <image> or <image>?", "The second.", "The first one, clearly.", ["image1.png", "image2.png"]),
            ("<image>Is it noisy?", "Yes, very.", "No.", ["image3.png"]),
            ("Say hello.", "Hello!", "Go away.", []),
        )
    ]
    (folder / "media_pairs.json").write_text(json.dumps(pairs, indent=1))
    info["media_pairs"] = {
        **info["media_demo"],
        "file_name": "media_pairs.json",
        "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected", "images": "images"},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return folder


def write_vision_model(folder: Path, arch: str = "qwen2_5_vl") -> Path:
    """A tiny Qwen2.5-VL or Qwen3-VL (built-in tokenizer plus the vision tokens); video frames are
    kept small."""
    from ulysses_pro.models.multimodal.tiny import make_tiny_vision_model

    return make_tiny_vision_model(arch, folder, video_pixels=(28 * 28 * 4, 28 * 28 * 16))

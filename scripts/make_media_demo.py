"""Write the image and video demo dataset under data/media_demo/ (deterministic; run from the repo root).

    python scripts/make_media_demo.py

Each image is a coloured shape on a plain background and each question asks for its colour or
shape, so a tiny vision-language model can learn the task in a few hundred steps (and a wrong
image-to-token placement shows up as a loss that does not fall). The videos are a square moving
left to right or right to left. The rows use LLaMA-Factory's sharegpt layout with `images` /
`videos` columns; `data/dataset_info.json` gets (or keeps) the `media_demo` entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220)}
SHAPES = ("square", "circle")
OUT = Path("data/media_demo")


def _image(colour: str, shape: str, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (245, 245, 240))
    draw = ImageDraw.Draw(image)
    box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return image


def _video(path: Path, rightwards: bool, frames: int = 8, fps: int = 4, size: tuple[int, int] = (84, 56)) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(frames):
            image = Image.new("RGB", size, (245, 245, 240))
            step = index if rightwards else frames - 1 - index
            left = 4 + step * (size[0] - 24) // (frames - 1)
            ImageDraw.Draw(image).rectangle((left, 18, left + 20, 38), fill=COLOURS["blue"])
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _turns(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = [(56, 56), (84, 56), (56, 84)]
    for index, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        name = f"{colour}_{shape}.png"
        _image(colour, shape, sizes[index % len(sizes)]).save(OUT / name)
        rows.append({"messages": _turns("<image>What colour is the shape?", f"It is {colour}."), "images": [f"media_demo/{name}"]})
        rows.append({"messages": _turns("Which shape is this? <image>", f"A {shape}."), "images": [f"media_demo/{name}"]})
    for direction, rightwards in (("right", True), ("left", False)):
        name = f"moving_{direction}.mp4"
        _video(OUT / name, rightwards)
        rows.append({"messages": _turns("<video>Which way does the square move?", f"To the {direction}."), "videos": [f"media_demo/{name}"]})
    (Path("data") / "media_demo.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    info_path = Path("data/dataset_info.json")
    info = json.loads(info_path.read_text())
    info["media_demo"] = {
        "file_name": "media_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images", "videos": "videos"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows, {len(list(OUT.iterdir()))} files in {OUT}")


if __name__ == "__main__":
    main()

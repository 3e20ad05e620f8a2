"""A row's media files: resolved as LLaMA-Factory resolves them, opened, and (videos) sampled.

Paths: LLaMA-Factory joins a relative path to `media_dir` (default: `dataset_dir`) when that file
exists and otherwise keeps the path as written (`data/converter.py`, `_find_medias`); a path that
exists neither way is an error here, naming the row, the column and both places looked in, before
any compute.

Video frames (LLaMA-Factory's `_get_video_sample_indices`): floor(duration x `video_fps`) frames, at
least 1, at most the stream's frame count and `video_maxlen`, at evenly spaced indices
(`linspace(0, frames - 1, n)`). Decoding is PyAV's (FFmpeg bindings, maintained, wheels with FFmpeg
inside for Linux, macOS and Windows; the decoder LLaMA-Factory uses, and it needs no torchvision,
which does not load against this project's CPU torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, RowRef

IMAGE_PLACEHOLDER = "<image>"  # LLaMA-Factory's placeholders (extras/constants.py)
VIDEO_PLACEHOLDER = "<video>"
AUDIO_PLACEHOLDER = "<audio>"


def resolve_media(paths, media_dir: Path, row: RowRef, column: str) -> list[Path]:
    """The files of one row's media column (a path or a list of paths)."""
    if paths is None:
        return []
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise DataError.at(row, f"column {column!r}: expected a path or a list of paths, got {paths!r}")
    found = []
    for index, written in enumerate(paths):
        joined = media_dir / written
        if joined.is_file():
            found.append(joined)
        elif Path(written).is_file():
            found.append(Path(written))
        else:
            raise DataError.at(
                row, f"{column}[{index}] {written!r}: no such file (looked in {media_dir} and as written)"
            )
    return found


def open_image(path: Path, row: RowRef):
    """The image as a loaded RGB-or-other PIL image (decoded now, so a broken file fails here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as error:
        raise DataError.at(row, f"image {path}: unreadable ({error})") from None
    return image


@dataclass(frozen=True)
class VideoStream:
    """What frame sampling needs to know about a video's first video stream."""

    width: int
    height: int
    frames: int  # as the container states it (0: unknown)
    seconds: float
    average_fps: float = 0.0  # the stream's average frame rate (0: unknown)


def _open_video(path: Path, row: RowRef):
    try:
        import av
    except ImportError:
        raise DataError.at(row, f"video {path}: reading videos needs PyAV (pip install av)") from None
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError) as error:
        raise DataError.at(row, f"video {path}: unreadable ({error})") from None
    stream = next((s for s in container.streams if s.type == "video"), None)
    if stream is None:
        container.close()
        raise DataError.at(row, f"video {path}: no video stream")
    return container, stream


def video_stream(path: Path, row: RowRef) -> VideoStream:
    container, stream = _open_video(path, row)
    try:
        seconds = float(stream.duration * stream.time_base) if stream.duration is not None else 0.0
        rate = float(stream.average_rate) if stream.average_rate is not None else 0.0
        return VideoStream(stream.width, stream.height, int(stream.frames), seconds, rate)
    finally:
        container.close()


def sample_indices(stream: VideoStream, video_fps: float, video_maxlen: int) -> list[int]:
    """Which frames LLaMA-Factory samples (see the module docstring)."""
    if stream.frames == 0:  # a stream without a frame count: the first `video_maxlen`
        return list(range(video_maxlen))
    count = max(1, math.floor(stream.seconds * video_fps))
    count = min(stream.frames, video_maxlen, count)
    if count == 1:
        return [0]
    step = (stream.frames - 1) / (count - 1)
    # numpy's linspace (its last point is the stop itself), then astype(int32): truncation
    return [int(i * step) for i in range(count - 1)] + [stream.frames - 1]


def video_frames(path: Path, indices: list[int], row: RowRef) -> list:
    """The frames at `indices` as PIL images, decoded in one pass."""
    wanted, last = set(indices), max(indices)
    container, stream = _open_video(path, row)
    frames = []
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames.append(frame.to_image())
            if index >= last:
                break
    finally:
        container.close()
    if not frames:
        raise DataError.at(row, f"video {path}: no frame decoded")
    return frames

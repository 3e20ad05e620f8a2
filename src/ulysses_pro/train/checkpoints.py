"""Checkpoints that are whole or absent: each is written into a staging folder and renamed into
place last, so a run killed during a save leaves nothing that resume would pick up half-written.

transformers writes `checkpoint-N` in place, file by file (weights, then optimizer, scheduler,
RNG states, trainer state), so a SIGKILL in between leaves a `checkpoint-N` that looks like the
newest one and fails, or silently resumes from a mix, on the next start.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = ".staging-"


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-numbered complete `checkpoint-N` folder, if any (staging folders never count)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := CHECKPOINT_NAME.match(path.name))
    ]
    return max(found)[1] if found else None


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def staged_checkpoint(run_dir: str | Path, step: int, *, renames: bool) -> Iterator[Path]:
    """Yield the folder to save `checkpoint-<step>` under; on exit the checkpoint is in `run_dir`.

    Every rank writes its part below the yielded folder; `renames` is true on the process that owns
    the output folder (transformers' `should_save`), which clears a stale staging folder first and
    moves the finished checkpoint into place after all ranks are done."""
    run_dir = Path(run_dir)
    name = f"checkpoint-{step}"
    staging = run_dir / f"{STAGING_PREFIX}{name}"
    if renames:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed during this save
        staging.mkdir(parents=True)
    _barrier()
    yield staging
    _barrier()  # every rank's files (DeepSpeed's shards, say) are written
    if renames:
        final = run_dir / name
        if final.exists():  # saved again at the same step (an interrupt right after a save)
            shutil.rmtree(final)
        os.replace(staging / name, final)
        staging.rmdir()
    _barrier()

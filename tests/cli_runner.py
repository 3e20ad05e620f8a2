"""Run `ulysses-pro` as a user does: a config file on disk and a fresh Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(
    args: list[str], env_extra: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=cli_env(env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(tmp_path: Path, **overrides) -> Path:
    config = {
        "model_name_or_path": "tiny:llama",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "demo_tasks",
        "dataset_dir": str(REPO / "data"),
        "cutoff_len": 96,
        "max_samples": 200,
        "neat_packing": True,
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 2,
        "max_steps": 6,
        "logging_steps": 1,
        "save_steps": 3,
        "learning_rate": 3e-3,
        "plot_loss": True,
        "report_to": "none",
    }
    config.update(overrides)
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()) + "\n")
    return path


def cli_env(env_extra: dict | None = None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


def start_cli(args: list[str], env_extra: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start `python ARGS` in its own session (so the test can kill the whole job), output to `log`."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=cli_env(env_extra),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def processes_with(**environment: str) -> list[int]:
    """Pids of this user's processes whose environment holds every given KEY=value (Linux /proc)."""
    wanted = {f"{key}={value}".encode() for key, value in environment.items()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            variables = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= variables:
            found.append(int(entry.name))
    return found

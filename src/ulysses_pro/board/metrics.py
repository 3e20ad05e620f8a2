"""What a run has written so far, read back: `trainer_log.jsonl` (train/metrics_log.py) and, once it
has finished, `all_results.json` (the Trainer's final metrics)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..train.metrics_log import LOG_FILE

# The curves the board draws, as the Trainer names them (reward, eval_reward: the RL stages).
CURVES = ("loss", "eval_loss", "reward", "eval_reward")


def read_log(output_dir: str | Path) -> list[dict]:
    """The log lines written so far; a half-written last line (the run is writing it) is skipped."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def curve_points(records: list[dict]) -> list[tuple[int, float, str]]:
    """(step, value, curve) for each logged loss / eval_loss / reward / eval_reward, in log order."""
    points = []
    for record in records:
        for name in CURVES:
            value = record.get(name)
            if isinstance(value, (int, float)) and "step" in record:
                points.append((int(record["step"]), float(value), name))
    return points


@dataclass
class Progress:
    """The latest numbers of a run, for the progress bar and the metric boxes."""

    step: int = 0
    total_steps: int = 0
    percentage: float = 0.0
    remaining_s: float | None = None
    elapsed_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_gib: list[float] = field(default_factory=list)
    memory: str = ""
    latest: dict = field(default_factory=dict)  # the last value of each curve

    def describe(self) -> str:
        """One line: step, percentage, time left, throughput, memory."""
        if not self.total_steps:
            return "no step logged yet"
        parts = [f"step {self.step}/{self.total_steps} ({self.percentage:.0f}%)"]
        if self.remaining_s is not None:
            parts.append(f"{format_seconds(self.remaining_s)} left")
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:,.0f} tokens/s")
        if self.peak_memory_gib:
            ranks = ", ".join(f"{value:.2f}" for value in self.peak_memory_gib)
            parts.append(f"peak {self.memory} GiB per rank: {ranks}")
        return " · ".join(parts)


def progress(records: list[dict]) -> Progress:
    """The latest progress; peaks are the largest each rank has reported."""
    out = Progress()
    for record in records:
        if "total_steps" in record:
            out.step = int(record.get("step", 0))
            out.total_steps = int(record.get("total_steps") or 0)
            out.percentage = float(record.get("percentage") or 0.0)
            out.remaining_s = record.get("remaining_s")
            out.elapsed_s = record.get("elapsed_s")
        if record.get("tokens_per_s") is not None:
            out.tokens_per_s = float(record["tokens_per_s"])
        peaks = record.get("peak_memory_gib") or []
        if peaks:
            if len(peaks) != len(out.peak_memory_gib):
                out.peak_memory_gib = [0.0] * len(peaks)
            out.peak_memory_gib = [max(a, float(b)) for a, b in zip(out.peak_memory_gib, peaks)]
            out.memory = str(record.get("memory", ""))
        for name in CURVES:
            if isinstance(record.get(name), (int, float)):
                out.latest[name] = float(record[name])
    return out


def final_metrics(output_dir: str | Path) -> dict:
    """The Trainer's `all_results.json` (train_loss, train_runtime, eval_loss, ...), or {}."""
    path = Path(output_dir) / "all_results.json"
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def format_seconds(seconds: float) -> str:
    """3725 -> '1:02:05'; 65 -> '1:05'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

"""Loss curves as PNG, from the Trainer's log history."""

from __future__ import annotations

from pathlib import Path


def smooth(values: list[float], weight: float = 0.0) -> list[float]:
    """Exponential moving average (TensorBoard-style), debiased so the first point is not pulled to 0."""
    out, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**count) if weight else value)
    return out


def plot_loss(log_history: list[dict], output_dir: str | Path, key: str = "loss") -> Path | None:
    """Write `training_<key>.png` (raw and smoothed); None when nothing was logged."""
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = zip(*points)
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    axis.plot(steps, values, color="#9bb8d3", linewidth=1, label="logged")
    if len(values) > 4:
        axis.plot(steps, smooth(list(values), 0.8), color="#1f5fa0", linewidth=2, label="smoothed")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(key)
    axis.set_title(f"training {key}")
    axis.grid(alpha=0.3)
    axis.legend()
    path = Path(output_dir) / f"training_{key}.png"
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path

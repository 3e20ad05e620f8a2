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


def _points(log_history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]


def plot_loss(
    log_history: list[dict], output_dir: str | Path, key: str = "loss", held_out: str | None = None
) -> Path | None:
    """Write `training_<key>.png` (raw and smoothed, plus the `held_out` key's evaluations when it
    was logged, e.g. `eval_reward` on the reward plot); None when `key` was never logged."""
    points = _points(log_history, key)
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
    evaluations = _points(log_history, held_out) if held_out else []
    if evaluations:
        eval_steps, eval_values = zip(*evaluations)
        axis.plot(eval_steps, eval_values, color="#c0392b", marker="o", linewidth=1.5, label=held_out)
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

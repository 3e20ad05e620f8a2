"""train/plotting.py: the loss and reward curves written with plot_loss."""

from __future__ import annotations

import matplotlib.figure

from ulysses_pro.train.plotting import plot_loss

HISTORY = [
    *({"step": step, "loss": 1.0 / step, "reward": 0.1 * step} for step in range(1, 7)),
    {"step": 3, "eval_reward": 0.25, "eval_runtime": 0.1},
    {"step": 6, "eval_reward": 0.5, "eval_runtime": 0.1},
]


def _saved_lines(monkeypatch, *args) -> dict[str, tuple[list, list]]:
    """The (x, y) of each labelled line of the figure plot_loss saves."""
    saved = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def capture(figure, path, *rest, **options):
        saved.update(
            {
                line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                for line in figure.axes[0].lines
            }
        )
        return real_savefig(figure, path, *rest, **options)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    path = plot_loss(*args)
    assert path is not None and path.stat().st_size > 1000
    return saved


def test_the_reward_plot_carries_the_held_out_reward_at_its_evaluation_steps(tmp_path, monkeypatch):
    lines = _saved_lines(monkeypatch, HISTORY, tmp_path, "reward", "eval_reward")
    assert set(lines) == {"logged", "smoothed", "eval_reward"}
    assert lines["eval_reward"] == ([3, 6], [0.25, 0.5])
    assert lines["logged"][0] == [1, 2, 3, 4, 5, 6]


def test_a_plot_without_evaluations_has_the_training_curve_only(tmp_path, monkeypatch):
    lines = _saved_lines(monkeypatch, HISTORY[:6], tmp_path, "reward", "eval_reward")
    assert set(lines) == {"logged", "smoothed"}
    assert plot_loss(HISTORY[6:], tmp_path, "reward", "eval_reward") is None  # no training curve, no plot

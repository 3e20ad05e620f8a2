"""Late-stage convergence on the quickstart task, with and without the gradient guard.

    python bench/gradient_guard.py [--seeds 0 1 2] [--steps 800] [--out bench/results]

Trains `examples/quickstart.yaml` once per seed with `gradient_guard: false` and once with
`gradient_guard: true` (all five strategies at their defaults), and reports the late-stage train
loss (mean of the last quarter of logged steps), the held-out eval loss and the guard's
interventions. Writes the loss curves to gradient_guard.png. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train_once(seed: int, guard: bool, steps: int, workdir: Path) -> dict:
    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    config = load_config(
        ROOT / "examples" / "quickstart.yaml",
        {
            "seed": seed,
            "gradient_guard": guard,
            "max_steps": steps,
            "dataset_dir": str(ROOT / "data"),
            "output_dir": str(workdir / f"{'guard' if guard else 'plain'}-{seed}"),
            "overwrite_output_dir": True,
            "save_strategy": "no",
            "plot_loss": False,
            "disable_tqdm": True,
        },
    )
    started = time.perf_counter()
    trainer = run_stage(config)
    history = trainer.state.log_history
    logged = [e for e in history if "loss" in e]
    train = [(e["step"], e["loss"]) for e in logged]
    tail = [loss for _, loss in train[-max(1, len(train) // 4) :]]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    return {
        "curve": train,
        "late_loss": statistics.fmean(tail),
        "eval_loss": evals[-1] if evals else float("nan"),
        "interventions": {
            k: v for k, v in logged[-1].items() if k.startswith("guard/") and k != "guard/grad_mean_abs"
        },
        "seconds": time.perf_counter() - started,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for (guard, seed), run in sorted(results.items()):
        steps, losses = zip(*run["curve"])
        axis.plot(
            steps,
            losses,
            color="tab:red" if guard else "tab:blue",
            alpha=0.8,
            linewidth=1,
            label=f"{'guard' if guard else 'no guard'} (seed {seed})",
        )
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("train loss (log scale)")
    axis.set_title("quickstart SFT: gradient guard on vs off")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for guard in (False, True):
                results[(guard, seed)] = train_once(seed, guard, args.steps, Path(workdir))
                run = results[(guard, seed)]
                print(
                    f"# seed {seed} guard {guard}: late loss {run['late_loss']:.4f}, eval {run['eval_loss']:.4f}, "
                    f"{run['seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"# quickstart, {args.steps} steps; late loss = mean train loss over the last quarter of logged steps"
    )
    print(
        "| seed | late loss, off | late loss, guard | eval loss, off | eval loss, guard | guard interventions |"
    )
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        off, on = results[(False, seed)], results[(True, seed)]
        counts = ", ".join(
            f"{k.removeprefix('guard/')} {v:.0f}" for k, v in sorted(on["interventions"].items())
        )
        print(
            f"| {seed} | {off['late_loss']:.4f} | {on['late_loss']:.4f} | {off['eval_loss']:.4f} | "
            f"{on['eval_loss']:.4f} | {counts} |"
        )
    for label, key in (("late loss", "late_loss"), ("eval loss", "eval_loss")):
        off = [results[(False, s)][key] for s in args.seeds]
        on = [results[(True, s)][key] for s in args.seeds]
        print(
            f"mean {label}: off {statistics.fmean(off):.4f} (sd {statistics.pstdev(off):.4f}), "
            f"guard {statistics.fmean(on):.4f} (sd {statistics.pstdev(on):.4f})"
        )
    path = out / "gradient_guard.png"
    plot(results, path)
    print(f"curves: {path}")


if __name__ == "__main__":
    main()

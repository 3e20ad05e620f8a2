"""Do the RL stages learn? Short CPU runs through the CLI, with their reward curves.

    python bench/rl_learning.py [--stages grpo ppo] [--work DIR] [--out bench/results]

grpo: a warm start (the quickstart's SFT, cut to 200 steps so the policy answers some demo tasks
      and misses others), then GRPO on the same prompts with the rule rewards of
      `examples/rewards/counting.py` (exact answer + word overlap, 0..2 per completion).
ppo:  a reward model trained by our `rm` stage (the shipped LoRA example) on the demo tasks'
      preference pairs, on the warm start's base, then PPO of the warm-started LoRA policy against
      it (`examples/ppo_quickstart.yaml`); the reward is the reward model's score.

Both evaluate on the held-out tasks of `demo_tasks_eval` (64 prompts the runs never train on):
greedy completions scored as training scores its rollouts, before training and every sixth of it
(`eval_reward`, train/rl/held_out.py).

Each run is one `python -m ulysses_pro train` process with LLaMA-Factory-style overrides, so what
is measured is the product's path. Prints the logged curve and the evaluations as tables and writes
`<out>/<stage>_learning.png`; asserts nothing (the tests check exactness, not learning speed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

WARM_START_STEPS = 200  # of the quickstart's 800: reward ~0.4 of 2, room to learn either way

# Held-out evaluation: greedy rollouts of the 64 held-out tasks, at step 0 and every eval_steps.
EVALUATION = {
    "do_eval": "true",
    "eval_dataset": "demo_tasks_eval",
    "per_device_eval_batch_size": 64,
    "eval_strategy": "steps",
    "eval_on_start": "true",
}


def _train(config: Path, overrides: dict[str, object], log: Path) -> float:
    """One training process; returns its wall time. Its output goes to `log`."""
    command = [sys.executable, "-m", "ulysses_pro", "train", str(config)]
    command += [f"{key}={value}" for key, value in overrides.items()]
    started = time.perf_counter()
    with log.open("w") as sink:
        done = subprocess.run(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def _history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def warm_start(work: Path) -> Path:
    folder = work / "sft"
    if not (folder / "config.json").exists():
        seconds = _train(
            EXAMPLES / "quickstart.yaml",
            {
                "output_dir": folder,
                "max_steps": WARM_START_STEPS,
                "do_eval": "false",
                "save_steps": 10_000,
                "plot_loss": "false",
            },
            work / "sft.log",
        )
        print(f"warm start: {WARM_START_STEPS} SFT steps in {seconds:.0f} s -> {folder}")
    return folder


def run_grpo(work: Path) -> tuple[list[dict], float]:
    policy = warm_start(work)
    output = work / "grpo"
    seconds = _train(
        EXAMPLES / "grpo_quickstart.yaml",
        {
            "model_name_or_path": policy,
            "output_dir": output,
            "per_device_train_batch_size": 8,  # prompts per step, 8 completions each
            "learning_rate": 1e-4,
            "max_steps": 300,
            "logging_steps": 10,
            **EVALUATION,
            "eval_steps": 50,
            "save_steps": 10_000,
            "plot_loss": "false",
        },
        work / "grpo.log",
    )
    return _history(output), seconds


def run_ppo(work: Path) -> tuple[list[dict], float]:
    policy = warm_start(work)
    reward_model = work / "rm"
    if not (reward_model / "value_head.safetensors").exists():
        # The shipped reward-model example, on the policy's own base and the demo tasks' pairs.
        seconds = _train(
            EXAMPLES / "reward_model.yaml",
            {
                "model_name_or_path": policy,
                "dataset": "demo_pairs",
                "output_dir": reward_model,
                "plot_loss": "false",
            },
            work / "rm.log",
        )
        accuracy = [e["rewards/accuracies"] for e in _history(reward_model) if "rewards/accuracies" in e]
        print(f"reward model: LoRA rm stage in {seconds:.0f} s, last logged pair accuracy {accuracy[-1]:.3f}")
    output = work / "ppo"
    seconds = _train(
        EXAMPLES / "ppo_quickstart.yaml",
        {
            "model_name_or_path": policy,
            "reward_model": reward_model,
            "output_dir": output,
            **PPO_SETTINGS,
            **EVALUATION,
            "eval_steps": 20,  # PPO steps
            "save_steps": 10_000,
            "plot_loss": "false",
        },
        work / "ppo.log",
    )
    return _history(output), seconds


PPO_SETTINGS = {
    "per_device_train_batch_size": 16,
    "learning_rate": 2e-4,
    "max_steps": 120,
    "logging_steps": 10,
}

# stage: (reward key, its parts, the right panel's key)
CURVES = {
    "grpo": ("reward", ["rewards/exact_answer", "rewards/answer_overlap"], "completions/mean_length"),
    "ppo": ("reward", [], "kl"),
}


def _table(entries: list[dict], columns: list[str]) -> None:
    print(" | ".join(f"{c.rpartition('/')[2]:>14}" for c in columns))
    for entry in entries:
        print(" | ".join(f"{entry.get(c, float('nan')):>14.4g}" for c in columns))


def report(stage: str, logged: list[dict], seconds: float, out: Path) -> None:
    reward_key, parts, length_key = CURVES[stage]  # length_key: the right panel
    history = [entry for entry in logged if reward_key in entry]
    evaluations = [entry for entry in logged if f"eval_{reward_key}" in entry]
    print(f"\n{stage}: {len(history)} logged points, {seconds:.0f} s wall (training process)")
    _table(history, ["step", reward_key, *parts, length_key])
    print(f"held-out evaluations ({len(evaluations)}, greedy):")
    _table(evaluations, ["step", *(f"eval_{key}" for key in (reward_key, *parts, length_key))])
    first, last = history[0][reward_key], history[-1][reward_key]
    head = sum(e[reward_key] for e in history[:3]) / min(3, len(history))
    tail = sum(e[reward_key] for e in history[-3:]) / min(3, len(history))
    print(
        f"{reward_key}: first {first:.3f}, last {last:.3f}; mean of first 3 points {head:.3f}, of last 3 {tail:.3f}"
    )
    if evaluations:
        key = f"eval_{reward_key}"
        print(
            f"{key}: {evaluations[0][key]:.3f} at step {evaluations[0]['step']}, "
            f"{evaluations[-1][key]:.3f} at step {evaluations[-1]['step']} (best {max(e[key] for e in evaluations):.3f})"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    left.plot(steps, [e[reward_key] for e in history], color="#1f5fa0", linewidth=2, label=reward_key)
    for part in parts:
        left.plot(steps, [e[part] for e in history], linewidth=1, label=part)
    if evaluations:
        left.plot(
            [e["step"] for e in evaluations],
            [e[f"eval_{reward_key}"] for e in evaluations],
            color="#c0392b",
            marker="o",
            linewidth=2,
            label=f"eval_{reward_key} (held-out, greedy)",
        )
    left.set_xlabel("optimizer step")
    left.set_ylabel("mean over the completions")
    left.set_title(f"{stage}: reward")
    left.grid(alpha=0.3)
    left.legend()
    right.plot(steps, [e[length_key] for e in history], color="#a05f1f", label=length_key)
    held_out = [e for e in evaluations if f"eval_{length_key}" in e]
    if held_out:
        right.plot(
            [e["step"] for e in held_out],
            [e[f"eval_{length_key}"] for e in held_out],
            color="#c0392b",
            marker="o",
            label=f"eval_{length_key} (held-out, greedy)",
        )
        right.legend()
    right.set_xlabel("optimizer step")
    right.set_ylabel("tokens" if length_key.startswith("completions") else "nats per completion")
    right.set_title(length_key)
    right.grid(alpha=0.3)
    figure.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stage}_learning.png"
    figure.savefig(path)
    plt.close(figure)
    print(f"curve written to {path}")


RUNS = {"grpo": run_grpo, "ppo": run_ppo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/ulysses_pro_rl_learning"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    options = parser.parse_args()
    options.work.mkdir(parents=True, exist_ok=True)
    for stage in options.stages:
        history, seconds = RUNS[stage](options.work)
        report(stage, history, seconds, options.out)


if __name__ == "__main__":
    main()

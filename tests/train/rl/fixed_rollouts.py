"""An RL run whose rollouts are a fixed table (`test_grpo_parallel.fixed_completions`), so that an
engine's or a layout's losses can be compared with one process: the keys of such a run and the
rank functions that train it."""

from __future__ import annotations

from pathlib import Path

from ..harness import run_training

DATA = str(Path(__file__).resolve().parents[3] / "data")


def fixed_rollout_keys(stage: str, folder: Path, **keys) -> dict:
    """Full fine-tuning ppo (a full reward model) or grpo (a reward function), 2 steps of 2 x GA 2."""
    from .reward_models import write_reward_models
    from .test_grpo_parallel import REWARDS

    common = {
        "stage": stage,
        "finetuning_type": "full",
        "dataset": "demo_tasks",
        "dataset_dir": DATA,
        "template": "chatml",
        "max_samples": 16,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "cutoff_len": 64,
    }
    if stage == "ppo":
        common.update(reward_model=str(write_reward_models(folder / "rm")["full"]), reward_model_type="full")
        common.update(ppo_epochs=1)
    else:
        common.update(reward_funcs=[f"{REWARDS}:answer_overlap"], num_generations=4, beta=0.1)
    return {**common, **keys}


def use_fixed_rollouts() -> None:
    """In a rank process: the policy samples the fixed table."""
    from ulysses_pro.train.rl import rollout

    from .test_grpo_parallel import fixed_completions

    rollout.PolicySampler.__call__ = fixed_completions


def train_with_fixed_rollouts(rank, world_size, keys):
    use_fixed_rollouts()
    return run_training(**keys)

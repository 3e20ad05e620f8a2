"""GRPO: group-relative policy optimisation with rule rewards (Python functions), under SP."""

from __future__ import annotations

from pathlib import Path

from ...config import RunConfig
from ...data.prompts import PromptCollator, build_prompt_datasets
from ..rl.grpo_trainer import GrpoTrainer
from ..rl.rewards import load_reward_functions
from ..workflow import run_workflow
from .sampling import configure_sampling


def _configure(trainer: GrpoTrainer, bundle, config: RunConfig) -> None:
    """Wire what needs the trainer's SP layout and plain attention: the sampler and the rewards."""
    configure_sampling(trainer, bundle, config)
    base_dir = Path(config.config_file).parent if config.config_file else None
    trainer.reward_functions = load_reward_functions(
        config.finetuning.reward_funcs, config.finetuning.reward_weights, base_dir
    )


def run_grpo(config: RunConfig, callbacks: list | None = None):
    """Sample `num_generations` completions per prompt, reward them, and train on group advantages."""
    return run_workflow(
        config,
        callbacks,
        GrpoTrainer,
        PromptCollator,
        needs_reference=config.finetuning.beta > 0,
        trainer_kwargs={"grpo": config.finetuning},
        build_data=build_prompt_datasets,
        configure_trainer=_configure,
    )

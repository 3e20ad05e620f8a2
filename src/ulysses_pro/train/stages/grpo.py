"""GRPO: group-relative policy optimisation with rule rewards (Python functions) and/or a reward
model, under SP."""

from __future__ import annotations

from pathlib import Path

from ...config import RunConfig
from ...data.prompts import PromptCollator, answer_suffix_ids, build_prompt_datasets
from ..rl.grpo_trainer import GrpoTrainer
from ..rl.reward_model import RewardModel
from ..rl.rewards import load_reward_functions
from ..workflow import run_workflow
from .sampling import configure_sampling


def _configure(trainer: GrpoTrainer, bundle, config: RunConfig) -> None:
    """Wire what needs the trainer's SP layout and plain attention: the sampler and the rewards."""
    configure_sampling(trainer, bundle, config)
    finetuning = config.finetuning
    functions = finetuning.reward_funcs or []
    weights = finetuning.reward_weights
    base_dir = Path(config.config_file).parent if config.config_file else None
    if functions:
        trainer.reward_functions = load_reward_functions(
            functions, weights[: len(functions)] if weights else None, base_dir
        )
    if finetuning.reward_model:
        trainer.reward_model = RewardModel.load(config, trainer.model, trainer.processing_class)
        trainer.score_suffix = answer_suffix_ids(bundle.template, trainer.processing_class)
        trainer.reward_model_weight = weights[-1] if weights else 1.0


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

"""PPO with a reward model, LLaMA-Factory's `stage: ppo`, under SP."""

from __future__ import annotations

import logging

from ...config import RunConfig
from ...data.prompts import PromptCollator, answer_suffix_ids, build_prompt_datasets
from ...models.loader import adapter_paths
from ...models.value_head import attach_value_head, load_value_head
from ..rl.ppo_trainer import PpoTrainer
from ..rl.reward_model import RewardModel
from ..workflow import run_workflow
from .sampling import configure_sampling

logger = logging.getLogger(__name__)


def _attach_critic(model, config: RunConfig):
    """The critic is a value head on the policy; a saved one (a PPO checkpoint) is picked up."""
    attach_value_head(model, seed=config.training.seed, freeze_lm_head=False)
    adapters = adapter_paths(config.model)
    load_value_head(model, adapters[-1] if adapters else config.model.model_name_or_path)
    return model


def _configure(trainer: PpoTrainer, bundle, config: RunConfig) -> None:
    configure_sampling(trainer, bundle, config)
    trainer.score_suffix = answer_suffix_ids(bundle.template, trainer.processing_class)
    trainer.reward_model = RewardModel.load(config, trainer.model, trainer.processing_class)


def _count_in_ppo_steps(config: RunConfig) -> None:
    """LLaMA-Factory counts max_steps, logging_steps and save_steps in PPO steps; each is
    ppo_epochs x ppo_buffer_size optimizer updates here. eval_steps too, so held-out evaluations
    fall between PPO steps."""
    updates = config.finetuning.ppo_epochs * config.finetuning.ppo_buffer_size
    args = config.training
    for key in ("max_steps", "logging_steps", "save_steps", "eval_steps"):
        value = getattr(args, key)
        if (
            isinstance(value, int)
            and value >= 1
            or isinstance(value, float)
            and value >= 1
            and value.is_integer()
        ):
            setattr(args, key, int(value) * updates)
    logger.info("one PPO step = %d optimizer updates (ppo_epochs x ppo_buffer_size)", updates)


def run_ppo(config: RunConfig, callbacks: list | None = None):
    """Roll out, score with the reward model, and optimise the clipped PPO objective with a critic."""
    _count_in_ppo_steps(config)
    return run_workflow(
        config,
        callbacks,
        PpoTrainer,
        PromptCollator,
        needs_reference=True,
        prepare_model=_attach_critic,
        trainer_kwargs={"ppo": config.finetuning},
        build_data=build_prompt_datasets,
        configure_trainer=_configure,
    )

"""GRPO: group-relative policy optimisation with rule rewards (Python functions), under SP."""

from __future__ import annotations

from pathlib import Path

from ...config import RunConfig
from ...data.prompts import PromptCollator, build_prompt_datasets
from ..rl.grpo_trainer import GrpoTrainer
from ..rl.rewards import load_reward_functions
from ..rl.rollout import PolicySampler
from ..workflow import run_workflow, weights_are_sharded


def _configure(trainer: GrpoTrainer, bundle, config: RunConfig) -> None:
    """Wire what needs the trainer's SP layout and plain attention: the sampler and the rewards."""
    tokenizer = trainer.processing_class
    layout = trainer.sp_layout
    trainer.stop_ids = bundle.template.stop_token_ids(tokenizer)
    trainer.sampler = PolicySampler(
        tokenizer,
        trainer.stop_ids,
        config.generating.generate_kwargs(),
        config.data.cutoff_len,
        seed=config.training.seed,
        dp_rank=layout.dp_rank if layout is not None else config.training.process_index,
        plain_attention=trainer.replaced_attention,
        # Sharded weights: every rank takes part in every forward, so all decode until the longest ends.
        synced_gpus=weights_are_sharded(trainer),
    )
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

"""What the RL stages wire once the trainer and its SP layout exist: the policy's sampler (and,
with do_eval, the held-out one)."""

from __future__ import annotations

from ...config import ConfigError, RunConfig
from ...models.sp_decode import decode_problem
from ..rl.engines import SamplingSettings, make_engine
from ..rl.held_out import held_out_settings
from ..rl.rollout import PolicySampler
from ..rl.rollout_memory import check_rollouts_fit, kv_bytes_per_token
from ..workflow import weights_are_sharded


def _check_fit(trainer, config: RunConfig, settings: SamplingSettings, layout) -> None:
    """On a GPU: the longest rollout call's KV cache against the free memory (CPU runs are bounded by
    the host, which the OS manages)."""
    import torch

    weights = next(trainer.model.parameters())
    if weights.device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(weights.device)
    cutoff = config.data.cutoff_len
    new = settings.budget(1, cutoff)
    finetuning = config.finetuning
    generations = getattr(finetuning, "num_generations", 1) if finetuning.stage == "grpo" else 1
    per_token = kv_bytes_per_token(trainer.model.config, weights.element_size())
    check_rollouts_fit(
        per_token,
        finetuning.rollout_engine,
        finetuning.rollout_batch_size,
        generations,
        cutoff,
        new,
        layout.sp_size if layout is not None else 1,
        free,
    )


def configure_sampling(trainer, bundle, config: RunConfig) -> None:
    """The sampler (the configured engine, plain attention, the generating keys, seeded per DP rank),
    the stop tokens, and the temperature the trainer's log-probs are taken at."""
    tokenizer = trainer.processing_class
    layout = trainer.sp_layout
    finetuning = config.finetuning
    settings = SamplingSettings.from_generating(config.generating)
    trainer.stop_ids = bundle.template.stop_token_ids(tokenizer)
    trainer.logit_temperature = settings.logit_temperature
    if finetuning.rollout_engine == "sequence_parallel":
        problem = decode_problem(trainer.model)
        if problem:
            raise ConfigError(
                f"{config.origins.get('rollout_engine', 'default')}: rollout_engine: sequence_parallel: "
                f"this model cannot decode from a split KV cache: {problem}; use rollout_engine: batched"
            )
    _check_fit(trainer, config, settings, layout)
    trainer.sampler = _sampler(trainer, config, settings)
    if config.training.do_eval:
        # Held-out rollouts: the same engine, greedy unless eval_do_sample (train/rl/held_out.py).
        trainer.eval_sampler = _sampler(
            trainer, config, held_out_settings(settings, finetuning.eval_do_sample)
        )


def _sampler(trainer, config: RunConfig, settings: SamplingSettings) -> PolicySampler:
    """The configured engine decoding at `settings`, seeded per DP rank."""
    tokenizer = trainer.processing_class
    layout = trainer.sp_layout
    finetuning = config.finetuning
    engine = make_engine(
        finetuning.rollout_engine,
        tokenizer,
        settings,
        trainer.stop_ids,
        trainer.replaced_attention,
        batch_size=finetuning.rollout_batch_size,
        # Sharded weights: every rank takes part in every forward, so all decode until the longest ends.
        synced_gpus=weights_are_sharded(trainer),
        layout=layout,
    )
    return PolicySampler(
        tokenizer,
        trainer.stop_ids,
        settings,
        config.data.cutoff_len,
        seed=config.training.seed,
        dp_rank=layout.dp_rank if layout is not None else config.training.process_index,
        engine=engine,
    )

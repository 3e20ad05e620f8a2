"""What the RL stages wire once the trainer and its SP layout exist: the policy's sampler."""

from __future__ import annotations

from ...config import RunConfig
from ..rl.rollout import PolicySampler
from ..workflow import weights_are_sharded


def configure_sampling(trainer, bundle, config: RunConfig) -> None:
    """The sampler (plain attention, the generating keys, seeded per DP rank) and the stop tokens."""
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

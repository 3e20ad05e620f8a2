"""PPO's reward model: a folder our `rm` stage wrote, scoring each completion at its last token.

Two kinds, as LLaMA-Factory's `reward_model_type`:
- `lora`: the folder is a LoRA adapter (plus `value_head.safetensors`) trained on the policy's own
  base model. It is loaded as a second adapter of the policy ("reward") and switched on only while
  scoring, so no second copy of the base weights exists.
- `full`: the folder is a whole model (the rm stage with full / freeze fine-tuning, or `export`),
  optionally with `reward_model_adapters`, loaded frozen beside the policy.
Either runs the policy's attention implementation, so under SP it is split like the policy and the
score (the value head at the row's last real token) is summed over the SP group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from ...config import ConfigError, RunConfig
from ...engines.fsdp2 import shard_model
from ...models.attention import share_sequence_parallel
from ...models.loader import load_model
from ...models.value_head import VALUE_HEAD_FILE, attach_value_head, load_value_head
from ...models.wrappers import unwrap_engine, unwrap_model
from ..reference import partitioned_for_inference

logger = logging.getLogger(__name__)

REWARD_ADAPTER = "reward"


def _value_head_folder(folder: str) -> Path:
    path = Path(folder)
    if not (path / VALUE_HEAD_FILE).is_file():
        raise ConfigError(
            f"reward_model: {folder} has no {VALUE_HEAD_FILE}; give a folder the rm stage wrote "
            "(or that `ulysses-pro export` wrote from one)"
        )
    return path


class RewardModel:
    """Gives `score(policy, batch)`: one scalar per row of an (SP-split) prompt + completion batch."""

    def __init__(self, frozen: nn.Module | None, head: nn.Linear | None = None):
        # `frozen`: a separate full reward model (its own v_head); else the policy's "reward" adapter
        # with `head`.
        self.frozen, self.head = frozen, head

    @classmethod
    def load(cls, config: RunConfig, policy: nn.Module, tokenizer) -> RewardModel:
        finetuning = config.finetuning
        if finetuning.reward_model_type == "lora":
            folder = _value_head_folder(finetuning.reward_model)
            peft = unwrap_engine(policy)
            if not hasattr(peft, "load_adapter"):
                raise ConfigError("reward_model_type: lora needs a LoRA policy (finetuning_type: lora)")
            peft.load_adapter(str(folder), adapter_name=REWARD_ADAPTER, is_trainable=False)
            peft.set_adapter("default")  # back to training the policy's own adapter
            hf_model = unwrap_model(policy)
            config_ = (
                hf_model.config.get_text_config()
                if hasattr(hf_model.config, "get_text_config")
                else hf_model.config
            )
            head = nn.Linear(config_.hidden_size, 1)
            holder = nn.Module()
            holder.v_head = head
            load_value_head(holder, folder)
            head.requires_grad_(False)
            logger.info("reward model: LoRA adapter %s on the policy's base", folder)
            return cls(None, head.to(next(hf_model.parameters()).device))
        adapters = finetuning.reward_model_adapters
        model_args = dataclasses.replace(
            config.model, model_name_or_path=finetuning.reward_model, adapter_name_or_path=adapters
        )
        kind = dataclasses.replace(finetuning, finetuning_type="lora" if adapters else "full")
        model = load_model(model_args, kind, tokenizer, config.training, is_trainable=False)
        attach_value_head(model, seed=config.training.seed)
        folder = adapters.split(",")[-1].strip() if adapters else finetuning.reward_model
        load_value_head(model, _value_head_folder(folder))
        share_sequence_parallel(model, policy)
        model.requires_grad_(False)
        model.eval()
        logger.info("reward model: %s (full)", finetuning.reward_model)
        if is_deepspeed_zero3_enabled():
            # Loaded as partitions (as the policy): an optimizer-free engine gathers them per layer.
            return cls(partitioned_for_inference(model, config.training))
        if config.fsdp is not None:
            # Sharded as the policy, no optimizer; the value head scores inside the model's forward
            # (as its output layer), where the root's weights are gathered.
            return cls(shard_model(model, config.fsdp, config.training, pure_bf16=config.finetuning.pure_bf16))
        return cls(model.to(next(unwrap_model(policy).parameters()).device))

    @contextlib.contextmanager
    def _scoring(self, policy: nn.Module) -> Iterator[tuple[nn.Module, nn.Linear]]:
        if self.frozen is not None:
            yield self.frozen, unwrap_model(self.frozen).v_head
            return
        peft = unwrap_engine(policy)
        was_training = peft.training
        peft.eval()
        peft.set_adapter(REWARD_ADAPTER)
        try:
            yield peft, self.head
        finally:
            # set_adapter marks the active adapter trainable: give training back to the policy's.
            peft.set_adapter("default")
            peft.train(was_training)

    @torch.no_grad()
    def score(
        self, policy: nn.Module, batch: dict[str, torch.Tensor], last_token: torch.Tensor, sequence_sum
    ) -> torch.Tensor:
        """The value head at each row's last real token (`last_token`: 1 there, on whichever rank
        holds it), summed over the SP group by `sequence_sum`."""
        with self._scoring(policy) as (module, head):
            lm_head = unwrap_model(module).get_output_embeddings()

            def forward(hidden: torch.Tensor) -> torch.Tensor:
                return head(hidden.to(head.weight.dtype)).squeeze(-1)

            lm_head.forward = forward
            try:
                scores = module(**batch, use_cache=False).logits.float()
            finally:
                del lm_head.forward
        return sequence_sum((scores * last_token.to(scores.dtype)).sum(dim=-1))

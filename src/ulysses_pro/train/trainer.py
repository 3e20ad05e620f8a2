"""One Trainer for every stage: pre-shifted labels, tiled loss head, exact loss normalisation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..models.memory import token_loss_head
from ..parallel.reduce import count_targets, global_sum, normalized_token_loss


class UlyssesTrainer(Trainer):
    """transformers.Trainer whose token losses keep DESIGN contract 6 across GA and ranks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # compute_loss already divides by the step's global target count, so the base class must not
        # divide by the number of accumulation steps again.
        self.loss_is_scaled_for_ga = True

    @property
    def gradient_average_world(self) -> int:
        """How many ranks the engine averages gradients over (DDP, FSDP and DeepSpeed all average)."""
        return max(1, self.args.world_size)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples or "shift_labels" not in batch_samples[0]:
            return None
        local = sum(count_targets(batch["shift_labels"]) for batch in batch_samples)
        return global_sum(torch.as_tensor(local, device=device))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        inputs = dict(inputs)
        targets = inputs.pop("shift_labels")
        with token_loss_head(model, targets):
            outputs = model(**inputs, use_cache=False)
        token_losses = outputs.logits
        if num_items_in_batch is None:
            num_items_in_batch = global_sum(count_targets(targets))
        loss = normalized_token_loss(token_losses.sum(), num_items_in_batch, self.gradient_average_world)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            count = self._get_num_items_in_batch([inputs], self.args.device)
            loss = self.compute_loss(model, inputs, num_items_in_batch=count)
        return loss.detach(), None, None

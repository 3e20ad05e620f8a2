"""The Trainer of whole-sequence losses (dpo, kto, rm): DESIGN contract 7.

Per-sequence sums (answer log-probs, answer lengths, rewards) are summed over the SP group before
any nonlinearity, with an all-reduce whose backward is the identity. Every SP rank then holds the
same per-sequence loss; it back-propagates `sum(losses) / N_sequences_global * W`, which gives each
rank the gradient of its own tokens' share, and the engine's average over W ranks the exact
gradient of the mean loss over the global batch (all micro-batches and DP ranks).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.memory import token_loss_head
from ..parallel.reduce import IGNORE_INDEX, normalized_token_loss
from .metrics import SequenceMetrics
from .trainer import UlyssesTrainer


class SequenceLossTrainer(UlyssesTrainer):
    """UlyssesTrainer for losses defined per sequence rather than per token."""

    def __init__(self, *args: Any, reference=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference = reference.to(self.args.device) if reference is not None else None
        self.train_metrics = SequenceMetrics(self.args.device)
        self.metric_sources.append(self.train_metrics)

    # -- what subclasses provide -------------------------------------------------------------------

    def num_sequences(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss terms (pairs, examples) one micro-batch holds."""
        raise NotImplementedError

    def sequence_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sequence losses of a micro-batch (same value on every SP rank); record metrics."""
        raise NotImplementedError

    def sequence_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of answer-token log-probs per row, over the whole (SP-split) sequence.

        The tiled head returns -log p per token (0 where there is no target), at most one chunk of
        vocabulary logits at a time.
        """
        batch = dict(batch)
        targets = batch.pop("shift_labels")
        with self.embedding_noise(model, batch), token_loss_head(model, targets, head_options=self.loss_head):
            token_losses = model(**batch, use_cache=False).logits
        return self.sequence_sum(-token_losses.sum(dim=-1))

    def answer_lengths(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Number of answer (target) tokens per row, over the whole sequence."""
        return self.sequence_count(batch["shift_labels"].ne(IGNORE_INDEX).sum(dim=-1))

    def metrics_for(self, model: nn.Module) -> SequenceMetrics:
        """Where this forward's per-sequence values are recorded (training or evaluation)."""
        if self.padding_batch:
            return self.eval_metrics.muted()
        return self.train_metrics if model.training else self.eval_metrics

    def reference_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`sequence_logps` of the frozen reference, without gradient."""
        # The reference scores clean embeddings: no NEFTune noise.
        clean = {k: v for k, v in batch.items() if k != "document_lengths"}
        with torch.no_grad(), self.reference.scoring(model) as reference:
            return self.sequence_logps(reference, clean)

    # -- normalisation -----------------------------------------------------------------------------

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples:
            return None
        return self._global_sequence_count(sum(self.num_sequences(b) for b in batch_samples), device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if model.training:
            for observe in self.batch_observers:
                observe(inputs)
        if num_items_in_batch is None:
            num_items_in_batch = self._global_sequence_count(self.num_sequences(inputs), self.args.device)
        losses = self.sequence_losses(model, inputs)
        loss = normalized_token_loss(losses.sum(), num_items_in_batch, self.gradient_average_world)
        return (loss, None) if return_outputs else loss

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Gradients need W x loss on each of the P SP ranks, but the logged loss is the mean over all
        # ranks: divide the reported value (not the back-propagated one) by P.
        return super().training_step(*args, **kwargs) / self.loss_replicas

    def evaluation_terms(self, model, inputs):
        # Every SP rank holds the same per-sequence losses: counted P times in sum and count alike.
        losses = self.sequence_losses(model, dict(inputs))
        if self.padding_batch:
            # Its rows have no targets: length-normalised losses are 0 / 0 there, so nothing of them
            # may enter (NaN * 0 is NaN). The forward ran for its collectives.
            return torch.zeros((), dtype=torch.float64, device=losses.device), 0
        return losses.sum(), self.num_sequences(inputs)

"""KTO on single answers labelled desirable / undesirable."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ...config import RunConfig
from ..losses import kto_loss
from ..sequence_trainer import SequenceLossTrainer
from ..workflow import run_sequence_stage


class KtoTrainer(SequenceLossTrainer):
    """Rows [:b] are the labelled (prompt, answer) pairs, rows [b:] the mismatched KL pairs."""

    def __init__(self, *args, finetuning=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.finetuning = finetuning

    def num_sequences(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["kto_labels"].numel()

    def _reference_point(self, model, kl_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """z0: mean log-ratio of the mismatched pairs over the whole global micro-batch, clamped at 0."""
        with torch.no_grad():
            policy = self.sequence_logps(model, kl_batch)
        reference = self.reference_logps(model, kl_batch)
        totals = torch.stack(
            [
                (policy - reference).sum().double(),
                torch.tensor(policy.numel(), dtype=torch.float64, device=policy.device),
            ]
        )
        if self.padding_batch:
            totals = totals * 0  # an evaluation padding batch runs the collective but adds nothing
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every DP rank's pairs count (TRL gathers them too); SP duplicates cancel in the ratio.
            dist.all_reduce(totals)
        return (totals[0] / totals[1]).clamp(min=0).to(policy.dtype)

    def sequence_losses(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = dict(batch)
        desirable = batch.pop("kto_labels")
        count = desirable.numel()
        matched = {k: v[:count] for k, v in batch.items()}
        mismatched = {k: v[count:] for k, v in batch.items()}
        reference_point = self._reference_point(model, mismatched)
        logps = self.sequence_logps(model, matched)
        reference_logps = self.reference_logps(model, matched)
        options = self.finetuning
        losses, rewards = kto_loss(
            logps,
            reference_logps,
            desirable,
            reference_point,
            options.pref_beta,
            options.kto_chosen_weight,
            options.kto_rejected_weight,
        )
        metrics = self.metrics_for(model)
        metrics.record("rewards/chosen", rewards[desirable])
        metrics.record("rewards/rejected", rewards[~desirable])
        metrics.record("logps/chosen", logps[desirable])
        metrics.record("logps/rejected", logps[~desirable])
        metrics.record("kl", reference_point)
        return losses


def run_kto(config: RunConfig, callbacks: list | None = None):
    """Kahneman-Tversky optimisation."""
    return run_sequence_stage(
        config, callbacks, KtoTrainer, needs_reference=True, trainer_kwargs={"finetuning": config.finetuning}
    )

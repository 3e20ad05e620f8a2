"""DPO family (sigmoid, hinge, ipo, simpo, orpo; BCO mixing; SFT term) on preference pairs."""

from __future__ import annotations

import torch

from ...config import RunConfig
from ..losses import REFERENCE_FREE_LOSSES, PreferenceBatch, preference_loss
from ..sequence_trainer import SequenceLossTrainer
from ..workflow import run_sequence_stage


class PreferenceTrainer(SequenceLossTrainer):
    """Scores chosen and rejected answers in one forward (rows [:b] chosen, [b:] rejected)."""

    def __init__(self, *args, finetuning=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.finetuning = finetuning

    def num_sequences(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def sequence_losses(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v for k, v in batch.items() if k != "last_token_mask"}
        options = self.finetuning
        pairs = self.num_sequences(batch)
        logps, lengths = self.sequence_logps(model, batch)
        reference = (None, None)
        if options.pref_loss not in REFERENCE_FREE_LOSSES:
            reference_logps, _ = self.reference_logps(model, batch)
            reference = (reference_logps[:pairs], reference_logps[pairs:])
        result = preference_loss(
            PreferenceBatch(logps[:pairs], logps[pairs:], lengths[:pairs], lengths[pairs:], *reference),
            options.pref_loss,
            options.pref_beta,
            label_smoothing=options.dpo_label_smoothing,
            simpo_gamma=options.simpo_gamma,
            bco_weight=options.pref_bco_weight,
            ftx=options.pref_ftx,
        )
        metrics = self.metrics_for(model)
        metrics.record("rewards/chosen", result.chosen_rewards)
        metrics.record("rewards/rejected", result.rejected_rewards)
        metrics.record("rewards/accuracies", (result.chosen_rewards > result.rejected_rewards).float())
        metrics.record("rewards/margins", result.chosen_rewards - result.rejected_rewards)
        metrics.record("logps/chosen", logps[:pairs])
        metrics.record("logps/rejected", logps[pairs:])
        return result.losses


def run_dpo(config: RunConfig, callbacks: list | None = None):
    """Direct preference optimisation (and its variants, chosen by `pref_loss`)."""
    needs_reference = config.finetuning.pref_loss not in REFERENCE_FREE_LOSSES
    return run_sequence_stage(
        config,
        callbacks,
        PreferenceTrainer,
        needs_reference=needs_reference,
        trainer_kwargs={"finetuning": config.finetuning},
    )

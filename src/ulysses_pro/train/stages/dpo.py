"""DPO family (sigmoid, hinge, ipo, simpo, orpo; BCO mixing; SFT term) on preference pairs.

With `pref_split_backward`, chosen and rejected answers are back-propagated one after the other:
a forward without activations gives every sequence's log-prob, hence the loss L and the
coefficients c_i = dL/dlogp_i; then each half runs forward + backward of sum_i c_i logp_i, whose
gradient is exactly that of L (the chain rule through the per-sequence log-probs). One extra
forward buys half the activation memory, so DPO trains at the sequence length SFT reaches.
"""

from __future__ import annotations

import torch

from ...config import RunConfig
from ...parallel.reduce import RunningMean, normalized_token_loss
from ..losses import REFERENCE_FREE_LOSSES, PreferenceBatch, preference_loss
from ..sequence_trainer import SequenceLossTrainer
from ..workflow import run_sequence_stage


class PreferenceTrainer(SequenceLossTrainer):
    """Scores chosen and rejected answers in one forward (rows [:b] chosen, [b:] rejected)."""

    def __init__(self, *args, finetuning=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.finetuning = finetuning
        # BCO's reward shift: one mean over every step and DP rank (SP ranks hold the same rewards).
        layout = self.sp_layout
        self.bco_baseline = RunningMean(layout.dp_group if layout is not None else None)

    def rank_state(self) -> dict:
        return {**super().rank_state(), "bco_baseline": self.bco_baseline.state_dict()}

    def load_rank_state(self, state: dict) -> None:
        super().load_rank_state(state)
        if "bco_baseline" in state:
            self.bco_baseline.load_state_dict(state["bco_baseline"])

    def _bco_shift(self, model):
        """Training batches move the running shift; evaluation reads it without moving it."""
        return self.bco_baseline.update if model.training else self.bco_baseline.current

    def num_sequences(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0] // 2

    def _losses(self, model, batch, logps):
        """Per-pair losses from per-sequence log-probs; records the logged rewards."""
        options = self.finetuning
        pairs = self.num_sequences(batch)
        lengths = self.answer_lengths(batch)
        reference = (None, None)
        if options.pref_loss not in REFERENCE_FREE_LOSSES:
            if self._split(model):
                reference = tuple(self.reference_logps(model, half) for half in self._halves(batch))
            else:
                reference_logps = self.reference_logps(model, batch)
                reference = (reference_logps[:pairs], reference_logps[pairs:])
        result = preference_loss(
            PreferenceBatch(logps[:pairs], logps[pairs:], lengths[:pairs], lengths[pairs:], *reference),
            options.pref_loss,
            options.pref_beta,
            label_smoothing=options.dpo_label_smoothing,
            simpo_gamma=options.simpo_gamma,
            bco_weight=options.pref_bco_weight,
            bco_baseline=self._bco_shift(model) if options.pref_bco_weight > 0 else None,
            ftx=options.pref_ftx,
        )
        metrics = self.metrics_for(model)
        metrics.record("rewards/chosen", result.chosen_rewards)
        metrics.record("rewards/rejected", result.rejected_rewards)
        metrics.record("rewards/accuracies", (result.chosen_rewards > result.rejected_rewards).float())
        metrics.record("rewards/margins", result.chosen_rewards - result.rejected_rewards)
        metrics.record("logps/chosen", logps[:pairs].detach())
        metrics.record("logps/rejected", logps[pairs:].detach())
        return result.losses

    def sequence_losses(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v for k, v in batch.items() if k != "last_token_mask"}
        return self._losses(model, batch, self.sequence_logps(model, batch))

    def _split(self, model) -> bool:
        return self.finetuning.pref_split_backward and model.training and torch.is_grad_enabled()

    def _halves(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The chosen rows and the rejected rows, as two batches."""
        pairs = self.num_sequences(batch)
        return [{k: v[rows] for k, v in batch.items()} for rows in (slice(0, pairs), slice(pairs, 2 * pairs))]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._split(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        batch = {k: v for k, v in inputs.items() if k != "last_token_mask"}
        for observe in self.batch_observers:
            observe(batch)
        if num_items_in_batch is None:
            num_items_in_batch = self._global_sequence_count(self.num_sequences(batch), self.args.device)
        # The surrogate forwards below must see the same NEFTune noise as these: replay its stream.
        noise_state = self.noise_generator(self.args.device).get_state()
        with torch.no_grad():  # one half at a time: no forward ever holds both halves' temporaries
            logps = torch.cat([self.sequence_logps(model, half) for half in self._halves(batch)])
        logps.requires_grad_(True)
        losses = self._losses(model, batch, logps)
        loss = normalized_token_loss(losses.sum(), num_items_in_batch, self.gradient_average_world)
        (coefficients,) = torch.autograd.grad(loss, logps)
        chosen, rejected = self._halves(batch)
        pairs = self.num_sequences(batch)
        self.noise_generator(self.args.device).set_state(noise_state)
        # The chosen half now (without gradient sync); the rejected half through the Trainer's own
        # backward, which syncs when the step ends. Its value is the loss, its gradient the surrogate's.
        with self.accelerator.no_sync(model):
            self.accelerator.backward(self._surrogate(model, chosen, coefficients[:pairs]))
        surrogate = self._surrogate(model, rejected, coefficients[pairs:])
        combined = surrogate - surrogate.detach() + loss.detach()
        return (combined, None) if return_outputs else combined

    def _surrogate(self, model, half: dict[str, torch.Tensor], coefficients: torch.Tensor) -> torch.Tensor:
        """sum_i c_i logp_i over one half: its gradient is that half's share of the loss gradient."""
        return (coefficients * self.sequence_logps(model, half)).sum()


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

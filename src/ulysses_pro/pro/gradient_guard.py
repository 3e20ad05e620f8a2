"""Opt-in gradient strategies applied between backward and the optimizer step.

The guard acts in `on_pre_optimizer_step`, i.e. on the gradients the optimizer will use: after
DDP/SP reduction and after the Trainer's unscale/clip. One statistic, the mean |g| over every
trainable element, is all-reduced across ranks, so every rank takes the same decisions:

- centralization: g <- g - mean(g over all dims but the first), weights of rank >= 2
  (Yong et al. 2020, "Gradient Centralization");
- small_grad_scaling: elements with 0 < |g| < threshold are multiplied by a factor;
- noise: when mean |g| < vanishing threshold, add N(0, std^2) noise (Neelakantan et al. 2015,
  "Adding Gradient Noise Improves Learning for Very Deep Networks"), seeded by (seed, step) so
  runs are reproducible and replicated gradients stay identical across ranks;
- lr_boost: while vanishing, the learning rate of this one step is multiplied by a factor and put
  back exactly after the step, before the scheduler runs, so the schedule itself never changes;
- clipping: when mean |g| > threshold, gradients are rescaled (direction kept) so that their
  mean |g| would equal the threshold.

Every intervention is counted; the counts appear in the training logs under `guard/`.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..config.args import ProArguments

logger = logging.getLogger(__name__)


def _local(grad: torch.Tensor) -> torch.Tensor:
    """The part of a gradient this rank holds (FSDP2 gives DTensors)."""
    return grad.to_local() if hasattr(grad, "to_local") else grad


def _is_sharded(grad: torch.Tensor) -> bool:
    return hasattr(grad, "to_local") and any(p.is_shard() for p in grad.placements)


def global_mean_abs(grads: list[torch.Tensor]) -> float:
    """Mean |g| over all elements of all gradients, identical on every rank.

    Replicated gradients (DDP) are equal everywhere, so the ranks' values are averaged (which
    only removes any last-bit disagreement); sharded ones (FSDP2) are summed over the shards.
    """
    device = _local(grads[0]).device if grads else torch.device("cpu")
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for grad in grads:
        local = _local(grad)
        sums[0] += local.detach().abs().sum(dtype=torch.float64)
        sums[1] += local.numel()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
        if not any(_is_sharded(g) for g in grads):
            sums /= dist.get_world_size()
    return float(sums[0] / sums[1]) if sums[1] > 0 else 0.0


class GradientGuard(TrainerCallback):
    """The strategies above, each on only when named in `gradient_guard_strategies`."""

    def __init__(self, settings: ProArguments, seed: int):
        self.settings = settings
        self.strategies = frozenset(settings.guard_strategies())
        self.seed = settings.gradient_guard_seed if settings.gradient_guard_seed is not None else seed
        self.counts: Counter[str] = Counter()
        self.last_mean_abs: float | None = None
        self._saved_lrs: list[float] | None = None

    # -- the step -------------------------------------------------------------------------------

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = [p for p in model.parameters() if p.grad is not None]
        self.apply(params, optimizer, state.global_step)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.restore_learning_rate(optimizer)

    def apply(self, params: list[torch.nn.Parameter], optimizer, step: int) -> None:
        """Run the enabled strategies on `params`' gradients (in place)."""
        if not params:
            return
        settings = self.settings
        grads = [p.grad for p in params]
        mean_abs = global_mean_abs(grads)
        self.last_mean_abs = mean_abs
        vanishing = mean_abs < settings.gradient_guard_vanishing_threshold
        exploding = mean_abs > settings.gradient_guard_clip_threshold
        with torch.no_grad():
            if "centralization" in self.strategies:
                self._centralize(grads)
            if "small_grad_scaling" in self.strategies:
                self._scale_small(grads)
            if vanishing and "noise" in self.strategies and settings.gradient_guard_noise_std > 0:
                self._add_noise(grads, step)
            if exploding and "clipping" in self.strategies:
                factor = settings.gradient_guard_clip_threshold / mean_abs
                for grad in grads:
                    _local(grad).mul_(factor)
                self.counts["clip_steps"] += 1
        if vanishing and "lr_boost" in self.strategies and optimizer is not None:
            self._boost_learning_rate(optimizer)

    def _centralize(self, grads) -> None:
        touched = 0
        for grad in grads:
            if grad.dim() >= 2:
                local = _local(grad)
                local.sub_(local.mean(dim=tuple(range(1, local.dim())), keepdim=True))
                touched += 1
        if touched:
            self.counts["centralized_steps"] += 1

    def _scale_small(self, grads) -> None:
        threshold, factor = (
            self.settings.gradient_guard_small_grad_threshold,
            self.settings.gradient_guard_small_grad_scale,
        )
        scaled = []
        for grad in grads:
            local = _local(grad)
            small = (local.abs() < threshold) & (local != 0)
            scaled.append(small.sum())
            local.copy_(torch.where(small, local * factor, local))
        # One host sync for the count, not one per parameter.
        self.counts["small_grad_elements"] += int(torch.stack(scaled).sum())

    def _add_noise(self, grads, step: int) -> None:
        seed = self.seed * 1_000_003 + step
        if any(_is_sharded(g) for g in grads) and dist.is_initialized():
            # Shards are distinct tensors: give each rank its own stream.
            seed += 7919 * dist.get_rank()
        std = self.settings.gradient_guard_noise_std
        generators: dict[torch.device, torch.Generator] = {}
        for grad in grads:
            local = _local(grad)
            # Drawn where the gradient lives (no host draw and copy per parameter); one seeded
            # stream per device, so a run and its resume add the same noise.
            if local.device not in generators:
                generators[local.device] = torch.Generator(device=local.device).manual_seed(seed)
            noise = torch.randn(
                local.shape, generator=generators[local.device], dtype=torch.float32, device=local.device
            )
            local.add_((noise * std).to(local.dtype))
        self.counts["noise_steps"] += 1

    def _boost_learning_rate(self, optimizer) -> None:
        self._saved_lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * self.settings.gradient_guard_lr_boost
        self.counts["lr_boost_steps"] += 1

    def restore_learning_rate(self, optimizer) -> None:
        """Put back the exact pre-boost learning rates (before the scheduler's step)."""
        if self._saved_lrs is None or optimizer is None:
            return
        for group, lr in zip(optimizer.param_groups, self._saved_lrs):
            group["lr"] = lr
        self._saved_lrs = None

    # -- reporting ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The intervention counts a resumed run continues from (the noise is seeded by step)."""
        return {"counts": dict(self.counts), "last_mean_abs": self.last_mean_abs}

    def load_state_dict(self, state: dict) -> None:
        self.counts = Counter(state["counts"])
        self.last_mean_abs = state["last_mean_abs"]

    def metrics(self) -> dict[str, float]:
        """Cumulative intervention counts (and the last mean |g|) for the training log."""
        out = {f"guard/{name}": float(self.counts[name]) for name in sorted(self.counts)}
        if self.last_mean_abs is not None:
            out["guard/grad_mean_abs"] = self.last_mean_abs
        return out

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            summary = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "no interventions"
            logger.info("gradient guard: %s", summary)

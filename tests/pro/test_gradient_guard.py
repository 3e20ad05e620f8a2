"""Each gradient strategy: its trigger and its non-trigger, the exact LR restore, determinism,
and decisions taken on globally reduced statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from ulysses_pro.config.args import ProArguments
from ulysses_pro.pro.gradient_guard import GradientGuard, global_mean_abs

from ..launcher import run_ranks

DATA = str(Path(__file__).resolve().parents[2] / "data")


def _guard(strategies: str, **keys) -> GradientGuard:
    return GradientGuard(
        ProArguments(gradient_guard=True, gradient_guard_strategies=strategies, **keys), seed=0
    )


def _params(scale: float, seed: int = 0) -> list[torch.nn.Parameter]:
    """A (4, 6) weight and a (4,) bias whose gradients have mean |g| of about `scale`."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(4, 6)), torch.nn.Parameter(torch.zeros(4))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * scale * 1.2533  # E|N(0, s^2)| = 0.798 s
    return params


def _grads(params) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


def _optimizer(params, lr=0.1):
    return torch.optim.SGD(params, lr=lr)


def test_noise_is_added_only_when_gradients_vanish():
    guard = _guard("noise")
    small = _params(1e-5)
    before = _grads(small)
    guard.apply(small, None, step=0)
    added = torch.cat([(p.grad - b).flatten() for p, b in zip(small, before)])
    assert 3e-3 < added.std() < 7e-3  # std 5e-3 noise
    assert guard.counts["noise_steps"] == 1

    normal = _params(1e-2)
    before = _grads(normal)
    guard.apply(normal, None, step=1)
    assert all(torch.equal(p.grad, b) for p, b in zip(normal, before))
    assert guard.counts["noise_steps"] == 1


def test_noise_is_reproducible_under_a_seed_and_changes_with_the_step():
    first, second, third = _params(1e-5), _params(1e-5), _params(1e-5)
    _guard("noise").apply(first, None, step=3)
    _guard("noise").apply(second, None, step=3)
    _guard("noise").apply(third, None, step=4)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(first, second))
    assert not torch.equal(first[0].grad, third[0].grad)


def test_small_gradient_elements_are_scaled():
    guard = _guard("small_grad_scaling")
    params = _params(1e-2)
    params[0].grad[0, :3] = torch.tensor([5e-5, -2e-5, 0.0])
    before = _grads(params)
    guard.apply(params, None, step=0)
    small = (before[0].abs() < 1e-4) & (before[0] != 0)
    assert small.sum() >= 2
    torch.testing.assert_close(params[0].grad[small], before[0][small] * 1.5)
    assert torch.equal(params[0].grad[~small], before[0][~small])  # large ones and exact zeros untouched
    assert guard.counts["small_grad_elements"] == int(small.sum()) + int(
        ((before[1].abs() < 1e-4) & (before[1] != 0)).sum()
    )


def test_centralization_touches_matrices_not_vectors():
    guard = _guard("centralization")
    params = _params(1.0)
    bias_before = params[1].grad.clone()
    guard.apply(params, None, step=0)
    torch.testing.assert_close(params[0].grad.mean(dim=1), torch.zeros(4), atol=1e-7, rtol=0)
    assert torch.equal(params[1].grad, bias_before)


def test_clipping_rescales_only_exploding_gradients():
    guard = _guard("clipping")
    big = _params(20.0)
    guard.apply(big, None, step=0)
    assert global_mean_abs([p.grad for p in big]) == pytest.approx(5.0, rel=1e-6)
    assert guard.counts["clip_steps"] == 1
    moderate = _params(1.0)
    before = _grads(moderate)
    guard.apply(moderate, None, step=1)
    assert all(torch.equal(p.grad, b) for p, b in zip(moderate, before))


def test_lr_boost_lasts_one_vanishing_step_and_the_schedule_is_untouched():
    """Vanishing at steps 0 and 1, normal at step 2: boosted rates are 1.2x the schedule's,
    and the schedule seen by the scheduler is exactly that of a run without the guard."""
    guard = _guard("lr_boost")
    params = _params(1.0)
    optimizer = _optimizer(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    reference = _optimizer(_params(1.0))
    reference_scheduler = torch.optim.lr_scheduler.LambdaLR(reference, lambda step: 1.0 / (1 + step))
    applied = []
    for step, scale in enumerate([1e-5, 1e-5, 1e-2]):
        for p, fresh in zip(params, _params(scale, seed=step)):
            p.grad = fresh.grad
        scheduled = optimizer.param_groups[0]["lr"]
        guard.apply(params, optimizer, step)
        applied.append(optimizer.param_groups[0]["lr"] / scheduled)
        optimizer.step()
        guard.restore_learning_rate(optimizer)
        assert optimizer.param_groups[0]["lr"] == scheduled  # exact, not approximately
        scheduler.step()
        reference.step()
        reference_scheduler.step()
        assert scheduler.get_last_lr() == reference_scheduler.get_last_lr()
    assert applied == pytest.approx([1.2, 1.2, 1.0], abs=0)
    assert guard.counts["lr_boost_steps"] == 2


def test_metrics_report_cumulative_counts():
    guard = _guard("noise,clipping")
    guard.apply(_params(1e-5), None, step=0)
    guard.apply(_params(50.0), None, step=1)
    metrics = guard.metrics()
    assert metrics["guard/noise_steps"] == 1.0 and metrics["guard/clip_steps"] == 1.0
    assert metrics["guard/grad_mean_abs"] > 5.0


def _decide_on_ranks(rank, world):
    # Rank 0 alone would see vanishing gradients, rank 1 alone normal ones; the global mean decides.
    guard = _guard("noise,lr_boost")
    params = _params(1e-5 if rank == 0 else 1e-2)
    optimizer = _optimizer(params)
    guard.apply(params, optimizer, step=0)
    return global_mean_abs([p.grad for p in params]), dict(guard.counts), optimizer.param_groups[0]["lr"]


def test_decisions_use_globally_reduced_statistics():
    results = run_ranks(_decide_on_ranks, 2)
    assert results[0][1] == results[1][1] == {}  # the average (about 5e-3) is not vanishing
    assert results[0][2] == results[1][2] == 0.1


class _RecordRates(TrainerCallback):
    """The rate the optimizer steps with, and the schedule's rate after each step."""

    def __init__(self):
        self.applied, self.scheduled = [], []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.applied.append(optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.scheduled.append(lr_scheduler.get_last_lr()[0])


def _train_recording(tmp_path, name, **keys):
    from ulysses_pro.config import load_config
    from ulysses_pro.train.workflow import run_token_stage

    config = load_config(
        {
            "model_name_or_path": "tiny:llama",
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "full",
            "dataset": "demo_chat",
            "dataset_dir": DATA,
            "max_samples": 16,
            "cutoff_len": 64,
            "per_device_train_batch_size": 4,
            "max_steps": 4,
            "learning_rate": 1e-3,
            "lr_scheduler_type": "cosine",
            "logging_steps": 1,
            "save_strategy": "no",
            "disable_tqdm": True,
            "output_dir": str(tmp_path / name),
            **keys,
        }
    )
    record = _RecordRates()
    trainer = run_token_stage(config, callbacks=[record])
    return record, [entry for entry in trainer.state.log_history if "loss" in entry]


def test_guard_in_training_boosts_each_step_and_keeps_the_cosine_schedule(tmp_path):
    plain, plain_logs = _train_recording(tmp_path, "plain")
    guarded, guarded_logs = _train_recording(
        tmp_path,
        "guarded",
        gradient_guard=True,
        gradient_guard_strategies="lr_boost",
        gradient_guard_vanishing_threshold=1e9,  # every step counts as vanishing
    )
    assert guarded.scheduled == plain.scheduled
    assert guarded.applied == pytest.approx([1.2 * lr for lr in plain.applied], rel=1e-12)
    assert [entry["guard/lr_boost_steps"] for entry in guarded_logs] == [1.0, 2.0, 3.0, 4.0]
    assert not any(key.startswith("guard/") for key in plain_logs[0])

"""The RL trainers put every model input on the model's device, and keep their experience in fp32.

On the CPU everything already sits on the model's device, so a batch that was never moved would
pass unseen. Here the rows the trainers collate are born as `HostTensor`s (what a tensor built on
the host is on a GPU machine): anything computed from one stays one, and only `.to(device)` turns it
into an ordinary tensor, as a copy to the GPU would. A module that receives a `HostTensor` is a
forward that would read host memory on CUDA ("Expected all tensors to be on the same device").
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer

from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.train.rl import ppo_trainer, rollout_trainer
from ulysses_pro.train.rl.grpo_trainer import ADVANTAGES, OLD_LOGPS, GrpoTrainer
from ulysses_pro.train.rl.ppo_trainer import EXPERIENCE, PpoTrainer

from ..harness import run_training
from .fixed_rollouts import fixed_rollout_keys


class HostTensor(torch.Tensor):
    """A tensor on the host: `.to(...)` returns an ordinary tensor, as a copy to the GPU does."""

    def to(self, *args, **kwargs):
        return torch.Tensor.to(self.as_subclass(torch.Tensor), *args, **kwargs)


def _on_host(batch: dict) -> dict:
    return {k: v.as_subclass(HostTensor) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _host_inputs(value) -> bool:
    if isinstance(value, HostTensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_host_inputs(v) for v in value)
    if isinstance(value, dict):
        return any(_host_inputs(v) for v in value.values())
    return False


@contextlib.contextmanager
def collated_on_the_host(monkeypatch):
    """Rows the RL trainers collate start on the host; every module call is checked for host inputs."""
    plain_call = PaddingCollator.__call__
    plain_padded = rollout_trainer.padded
    monkeypatch.setattr(PaddingCollator, "__call__", lambda self, rows: _on_host(plain_call(self, rows)))

    def padded(keys, dtype=torch.float32):
        extra = plain_padded(keys, dtype)
        return lambda rows, width: _on_host(extra(rows, width))

    monkeypatch.setattr(rollout_trainer, "padded", padded)
    monkeypatch.setattr(ppo_trainer, "padded", padded)
    offenders: list[str] = []

    def check(module, args):
        # Global hooks see positional inputs only: the embedding's ids, the rotary's positions and
        # every layer's hidden states come positionally, and carry a host origin along.
        if _host_inputs(args):
            offenders.append(type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        yield offenders
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "stage, keys",
    [
        # old log-probs (num_iterations 2), the reference (beta) and a reward model beside the function
        ("grpo", {"num_iterations": 2, "max_steps": 1}),
        ("ppo", {"max_steps": 1}),
    ],
)
def test_one_rl_step_feeds_every_model_its_inputs_on_the_models_device(tmp_path, monkeypatch, stage, keys):
    from .reward_models import write_reward_models

    extra = dict(keys)
    if stage == "grpo":
        extra.update(reward_model=str(write_reward_models(tmp_path / "rm")["full"]), reward_model_type="full")
    with collated_on_the_host(monkeypatch) as offenders:
        result = run_training(
            **fixed_rollout_keys(stage, tmp_path, output_dir=str(tmp_path / "out"), **extra)
        )
    assert result["losses"], "no training step ran"
    assert not offenders, f"modules called with inputs left on the host: {sorted(set(offenders))}"


def test_the_host_tensor_instrument_catches_a_batch_that_was_never_moved(monkeypatch):
    """The check above can fail: a module called on a collated batch without `.to(device)` is caught."""
    with collated_on_the_host(monkeypatch) as offenders:
        batch = PaddingCollator(0)([{"input_ids": [1, 2, 3], "shift_labels": [2, 3, -100]}])
        torch.nn.Embedding(8, 4)(batch["input_ids"])
        torch.nn.Embedding(8, 4)(batch["input_ids"].to("cpu"))
    assert offenders == ["Embedding"]


def _deepspeed_bf16_trainer(trainer_class):
    """A trainer as transformers' input preparation sees it under DeepSpeed with bf16."""
    trainer = trainer_class.__new__(trainer_class)
    trainer.args = SimpleNamespace(device=torch.device("cpu"))
    trainer.is_deepspeed_enabled = True
    ds_config = SimpleNamespace(dtype=lambda: torch.bfloat16)
    trainer.accelerator = SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(hf_ds_config=ds_config))
    )
    return trainer


@pytest.mark.parametrize(
    "trainer_class, experience", [(GrpoTrainer, (ADVANTAGES, OLD_LOGPS)), (PpoTrainer, EXPERIENCE)]
)
def test_rl_experience_keeps_fp32_through_the_deepspeed_bf16_input_path(trainer_class, experience):
    values = torch.tensor([[0.123456789, -1.000123, 3.14159265]])
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), **{key: values.clone() for key in experience}}
    # transformers' own preparation rounds them (what the override exists for) ...
    rounded = Trainer._prepare_inputs(_deepspeed_bf16_trainer(trainer_class), dict(batch))
    assert all(rounded[key].dtype == torch.bfloat16 for key in experience)
    # ... the RL trainers' keeps them bit for bit, and the model inputs as transformers prepares them.
    prepared = _deepspeed_bf16_trainer(trainer_class)._prepare_inputs(dict(batch))
    for key in experience:
        assert prepared[key].dtype == torch.float32 and torch.equal(prepared[key], values)
    assert torch.equal(prepared["input_ids"], batch["input_ids"])

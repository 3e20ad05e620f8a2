"""UlyssesTrainer's own data loaders take transformers' `dataloader_*` arguments."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ulysses_pro.train.trainer import UlyssesTrainer


def _options(device: str, workers: int, pin: bool = True) -> dict:
    args = SimpleNamespace(
        dataloader_num_workers=workers,
        dataloader_pin_memory=pin,
        dataloader_persistent_workers=True,
        dataloader_prefetch_factor=4,
        device=torch.device(device),
    )
    return UlyssesTrainer._loader_options(SimpleNamespace(args=args))


def test_loaders_pin_host_memory_for_a_gpu_and_take_the_worker_options():
    assert _options("cuda", 2) == {
        "num_workers": 2,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": 4,
    }
    assert _options("cuda", 0, pin=False) == {"num_workers": 0, "pin_memory": False}
    # nothing to copy to on the CPU (torch warns when pinning without an accelerator)
    assert _options("cpu", 0) == {"num_workers": 0, "pin_memory": False}

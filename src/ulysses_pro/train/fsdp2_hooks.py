"""The Trainer's side of FSDP2 (`engines/fsdp2.py`): no DDP around the sharded model, whole-model
saves gathered from every rank, and checkpoints written and resumed through
`torch.distributed.checkpoint` (sharded, so a checkpoint resumes at another world size).

Each hook falls through to transformers when the model is not sharded by FSDP2.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..engines import fsdp2
from ..models.wrappers import unwrap_engine, unwrap_model

SCHEDULER_FILE = "scheduler.pt"  # transformers' SCHEDULER_NAME


def _torch_optimizer(optimizer):
    """The torch optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


class Fsdp2Hooks:
    """Mixed into UlyssesTrainer ahead of transformers' Trainer."""

    @property
    def sharded_by_fsdp2(self) -> bool:
        return fsdp2.is_sharded(self.model)

    def _move_model_to_device(self, model: nn.Module, device: torch.device) -> None:
        if fsdp2.is_sharded(model):
            return  # fully_shard placed the shards (host memory when offloading)
        super()._move_model_to_device(model, device)

    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader=None) -> nn.Module:
        if training and fsdp2.is_sharded(unwrap_engine(model)):
            return model if isinstance(model, fsdp2.ShardedModel) else fsdp2.ShardedModel(model)
        return super()._wrap_model(model, training, dataloader)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.sharded_by_fsdp2 and _internal_call and getattr(self, "_staging_dir", None):
            # A checkpoint: every rank writes its shards; the config says what model they belong to.
            output_dir = output_dir or self.args.output_dir
            optimizer = _torch_optimizer(self.optimizer) if self.optimizer is not None else None
            fsdp2.save_sharded(output_dir, self.model, optimizer)
            if self.args.should_save:
                unwrap_model(self.model).config.save_pretrained(output_dir)
                for adapter in getattr(self.model, "peft_config", {}).values():
                    adapter.save_pretrained(output_dir)  # adapter_config.json: `convert` writes an adapter
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
            return
        super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if self.sharded_by_fsdp2 and state_dict is None:
            state_dict = fsdp2.full_state_dict(self.model)  # every rank takes part in the gather
            if not self.args.should_save:
                return
        super()._save(output_dir, state_dict)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.sharded_by_fsdp2:
            return super()._save_optimizer_and_scheduler(output_dir)
        # The optimizer state went into the sharded checkpoint with the model.
        if self.args.should_save and self.lr_scheduler is not None:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_FILE))
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.sharded_by_fsdp2 and fsdp2.has_sharded_state(resume_from_checkpoint):
            fsdp2.load_sharded_model(resume_from_checkpoint, self.model)
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if not (self.sharded_by_fsdp2 and checkpoint and fsdp2.has_sharded_state(checkpoint)):
            return super()._load_optimizer_and_scheduler(checkpoint)
        fsdp2.load_sharded_optimizer(checkpoint, self.model, _torch_optimizer(self.optimizer))
        scheduler = os.path.join(checkpoint, SCHEDULER_FILE)
        if os.path.isfile(scheduler):
            self.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))
        return None

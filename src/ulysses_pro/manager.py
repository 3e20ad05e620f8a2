"""`UlyssesTrainingManager`: the Python API around one training run.

    from ulysses_pro import UlyssesTrainingManager

    with UlyssesTrainingManager() as manager:
        manager.initialize("examples/quickstart.yaml", max_steps=50, adjust_lr=2.0)
        metrics = manager.run_training()
        print(manager.get_status())

`cleanup()` (also run on leaving the `with` block) undoes what the run set up in this process:
the sequence-parallel process groups, the attention function registered with transformers (the
model gets its previous implementation back), and the default process group if the manager
created it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class _StatusCallback(TrainerCallback):
    """Keeps the manager's view of the run current."""

    def __init__(self, manager: UlyssesTrainingManager):
        self.manager = manager

    def on_train_begin(self, args, state, control, **kwargs):
        self.manager._status.update(state="running", max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.manager._status["step"] = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.manager._status["last_loss"] = float(logs["loss"])
        if logs and "eval_loss" in logs:
            self.manager._status["last_eval_loss"] = float(logs["eval_loss"])


class UlyssesTrainingManager:
    """initialize -> run_training -> get_status -> cleanup; also a context manager."""

    def __init__(self) -> None:
        self.config = None
        self.trainer = None
        self._created_process_group = False
        self._status: dict[str, Any] = {"state": "created", "step": 0, "last_loss": None}

    # -- lifecycle --------------------------------------------------------------------------------

    def initialize(self, config: str | Path | dict, **overrides: Any) -> UlyssesTrainingManager:
        """Load and validate a YAML/JSON path or a dict of config keys; `overrides` win over it.

        Raises ConfigError for a bad config, before anything is allocated.
        """
        from .config import load_config

        self.config = load_config(config, overrides or None)
        self._init_process_group()
        self._status.update(state="initialized", step=0, last_loss=None)
        return self

    def run_training(self) -> dict[str, float]:
        """Run the configured stage to the end; returns the final train (and eval) metrics."""
        if self.config is None:
            raise RuntimeError("call initialize(config) before run_training()")
        from .train.stages import run_stage

        try:
            self.trainer = run_stage(self.config, callbacks=[_StatusCallback(self)])
        except BaseException:
            self._status["state"] = "failed"
            raise
        self._status.update(state="finished", step=self.trainer.state.global_step)
        metrics: dict[str, float] = {}
        for entry in self.trainer.state.log_history:
            metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
        return metrics

    def get_status(self) -> dict[str, Any]:
        """Stage, step, last loss, SP layout, world size and output folder of the run."""
        status = dict(self._status)
        if self.config is not None:
            parallel = self.config.parallel
            layout = getattr(self.trainer, "sp_layout", None)
            status.update(
                stage=self.config.finetuning.stage,
                world_size=self.config.training.world_size,
                output_dir=self.config.training.output_dir,
                sequence_parallel={
                    "size": parallel.sequence_parallel_size,
                    "mode": parallel.sequence_parallel_mode,
                    "layout": layout.describe() if layout is not None else None,
                },
            )
        return status

    def cleanup(self) -> None:
        """Destroy the process groups this manager created and undo the attention registration."""
        import torch.distributed as dist

        from .models.attention import remove_sequence_parallel, unregister_sequence_parallel
        from .parallel.mesh import destroy_sequence_parallel

        trainer, self.trainer = self.trainer, None
        if trainer is not None:
            layout = getattr(trainer, "sp_layout", None)
            replaced = getattr(trainer, "replaced_attention", None)
            if replaced is not None:
                remove_sequence_parallel(trainer.model, replaced)
            if layout is not None and dist.is_initialized():
                destroy_sequence_parallel(layout)
        unregister_sequence_parallel()
        if self._created_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self._created_process_group = False
        if self._status["state"] != "created":
            self._status["state"] = "cleaned up"

    def __enter__(self) -> UlyssesTrainingManager:
        return self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()

    # -- helpers ----------------------------------------------------------------------------------

    def _init_process_group(self) -> None:
        """Under torchrun (WORLD_SIZE > 1) start the default group, unless the caller already has."""
        import torch.distributed as dist

        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
            return
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self._created_process_group = True

"""One Trainer for every stage: pre-shifted labels, tiled loss head, exact loss normalisation."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from ..data.streaming import StreamingDataset
from ..models.embedding_noise import noisy_embeddings
from ..models.memory import LossHead, token_loss_head
from ..models.wrappers import unwrap_engine
from ..parallel.mesh import SequenceParallelLayout
from ..parallel.reduce import count_targets, global_sum, normalized_token_loss, sum_over_sequence_parallel
from ..parallel.sampler import EvaluationBatches, SequenceParallelSampler
from ..parallel.sharding import SequenceParallelCollator
from ..pro.torch_compat import safe_checkpoint_loading
from .checkpoints import staged_checkpoint
from .evaluation import PADDING_BATCH, EvaluationCollator, EvaluationRows
from .fsdp2_hooks import Fsdp2Hooks
from .loraplus import loraplus_param_groups
from .metrics import SequenceMetrics

# Per rank, next to transformers' rng_state_N.pth: NEFTune streams and the metric sources' state.
RANK_STATE_FILE = "ulysses_pro_rank{rank}.pt"


def row_length(row: dict) -> int:
    """Tokens a row adds to a batch: its input ids, or all of them for pair and KTO rows."""
    return sum(len(value) for key, value in row.items() if key.endswith("input_ids"))


class UlyssesTrainer(Fsdp2Hooks, Trainer):
    """transformers.Trainer whose token losses keep DESIGN contract 6 across GA and ranks."""

    # The loader's batches are token rows to split over the SP group; RL stages load prompts and
    # split the sequences they sample instead.
    loader_splits_sequences = True

    def __init__(
        self,
        *args: Any,
        sp_layout: SequenceParallelLayout | None = None,
        metric_sources: list | None = None,
        batch_observers: list | None = None,
        loss_head: LossHead | None = None,
        loraplus: tuple[float, float] | None = None,
        compute_accuracy: bool = False,
        **kwargs: Any,
    ) -> None:
        # LLaMA-Factory's compute_accuracy: evaluation also reports the next-token accuracy.
        self.compute_accuracy = compute_accuracy
        self.sp_layout = sp_layout
        # (loraplus_lr_ratio, loraplus_lr_embedding) when LoRA+ is on (train/loraplus.py).
        self.loraplus = loraplus
        # Chunking of the tiled loss head, or liger's fused loss (models/memory_stack.py).
        self.loss_head = loss_head or LossHead()
        # Objects with `metrics() -> dict` whose values join every training log line.
        self.metric_sources = list(metric_sources or [])
        # Callables that see each training batch as this rank computes it (debug logging).
        self.batch_observers = list(batch_observers or [])
        super().__init__(*args, **kwargs)
        # compute_loss already divides by the step's global target count, so the base class must not
        # divide by the number of accumulation steps again.
        self.loss_is_scaled_for_ga = True
        # NEFTune is applied per forward with per-document lengths (models/embedding_noise.py), not by
        # the base class's hook, which scales by the padded (and, under SP, sharded) length.
        self.embedding_noise_alpha = self.neftune_noise_alpha
        self.neftune_noise_alpha = None
        self._noise_generators: dict[torch.device, torch.Generator] = {}
        self._resumed_noise_states: dict[str, torch.Tensor] = {}
        # Sums and counts of the evaluation loss (and the stages' evaluation metrics), read once per
        # evaluation (train/evaluation.py); `padding_batch` is set while a padding batch runs.
        self.eval_metrics = SequenceMetrics(self.args.device)
        self.padding_batch = False

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.loraplus is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        ratio, embedding_lr = self.loraplus
        groups = loraplus_param_groups(
            opt_model,
            self.args.learning_rate,
            ratio,
            embedding_lr,
            self.args.weight_decay,
            self.get_decay_parameter_names(opt_model),
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)  # each group carries its own
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def embedding_noise(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> AbstractContextManager:
        """NEFTune for one training forward; pops `document_lengths` so the model never sees it."""
        lengths = batch.pop("document_lengths", None)
        if lengths is None or not self.embedding_noise_alpha or not model.training:
            return nullcontext()
        return noisy_embeddings(
            unwrap_engine(model), lengths, self.embedding_noise_alpha, self.noise_generator(lengths.device)
        )

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """This rank's NEFTune random stream: seeded per rank, so SP ranks do not repeat each other's noise."""
        if device not in self._noise_generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.args.seed * 1_000_003 + self.args.process_index + 1)
            resumed = self._resumed_noise_states.pop(str(device), None)
            if resumed is not None:
                generator.set_state(resumed)
            self._noise_generators[device] = generator
        return self._noise_generators[device]

    # -- this rank's own state beyond transformers' (NEFTune streams, guard counts) -------------

    def rank_state(self) -> dict:
        """What a checkpoint must hold so that a resumed run continues this rank exactly."""
        return {
            "noise_generators": {
                str(device): gen.get_state() for device, gen in self._noise_generators.items()
            },
            "metric_sources": [
                source.state_dict() if hasattr(source, "state_dict") else None
                for source in self.metric_sources
            ],
        }

    def load_rank_state(self, state: dict) -> None:
        self._resumed_noise_states = dict(state["noise_generators"])
        for device in list(self._noise_generators):
            if str(device) in self._resumed_noise_states:
                self._noise_generators[device].set_state(self._resumed_noise_states.pop(str(device)))
        for source, saved in zip(self.metric_sources, state["metric_sources"]):
            if saved is not None:
                source.load_state_dict(saved)

    def _rank_state_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, RANK_STATE_FILE.format(rank=self.args.process_index))

    def _save_rng_state(self, output_dir) -> None:
        super()._save_rng_state(output_dir)
        torch.save(self.rank_state(), self._rank_state_file(output_dir))

    # -- per-sequence sums over the SP group (contract 7) ------------------------------------

    @property
    def _sp_group(self):
        layout = self.sp_layout
        return layout.sp_group if layout is not None and layout.sp_size > 1 else None

    @property
    def loss_replicas(self) -> int:
        """How many ranks hold each sequence's loss (the SP group size)."""
        return self.sp_layout.sp_size if self.sp_layout is not None else 1

    def sequence_sum(self, local: torch.Tensor) -> torch.Tensor:
        """Per-sequence sum over the SP group; differentiable (identity backward, contract 7)."""
        group = self._sp_group
        return sum_over_sequence_parallel(local, group) if group is not None else local

    def sequence_count(self, local: torch.Tensor) -> torch.Tensor:
        """Per-sequence count over the SP group (no gradient)."""
        group = self._sp_group
        return global_sum(local, group) if group is not None else local

    def _global_sequence_count(self, local: int, device: torch.device) -> torch.Tensor:
        # Every SP rank of a DP group holds the same sequences: the world sum counts each P times.
        return global_sum(torch.as_tensor(local, device=device)) // self.loss_replicas

    @property
    def gradient_average_world(self) -> int:
        """How many ranks the engine averages gradients over (DDP, FSDP and DeepSpeed all average)."""
        return max(1, self.args.world_size)

    def _loader_options(self) -> dict:
        """Workers and host memory from transformers' `dataloader_*` arguments, as its loaders take them."""
        args = self.args
        # Pinned host pages make each batch's copy to the GPU a DMA transfer instead of a staged one.
        options = {
            "num_workers": args.dataloader_num_workers,
            "pin_memory": bool(args.dataloader_pin_memory) and args.device.type == "cuda",
        }
        if args.dataloader_num_workers > 0:
            options["persistent_workers"] = args.dataloader_persistent_workers
            options["prefetch_factor"] = args.dataloader_prefetch_factor
        return options

    def _sharded_loader(
        self,
        dataset,
        batch_size: int,
        shuffle: bool,
        group_by_length: bool = False,
        evaluation: bool = False,
    ) -> DataLoader:
        """Batches for this rank: DP ranks take disjoint samples, SP ranks of a group the same ones."""
        layout = self.sp_layout
        dp_size = layout.dp_size if layout else max(1, self.args.world_size)
        dp_rank = layout.dp_rank if layout else self.args.process_index
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        collate = self.data_collator
        if layout is not None and layout.sp_size > 1 and self.loader_splits_sequences:
            collate = SequenceParallelCollator(collate, collate.pad_token_id, layout)
        if isinstance(dataset, StreamingDataset):
            # The stream shards itself: every rank reads the same stream and keeps its DP share.
            return DataLoader(
                dataset.shard(dp_size, dp_rank),
                batch_size=batch_size,
                collate_fn=collate,
                **self._loader_options(),
            )
        if evaluation:
            # Every row once over the DP ranks, in order; short ranks run padding batches.
            return DataLoader(
                EvaluationRows(dataset),
                batch_sampler=EvaluationBatches(len(dataset), batch_size, dp_size, dp_rank),
                collate_fn=EvaluationCollator(collate),
                **self._loader_options(),
            )
        grouping = {}
        if group_by_length:
            # transformers' LengthGroupedSampler sorts groups of 50 global batches; so does this.
            lengths = (
                dataset.row_lengths() if hasattr(dataset, "row_lengths") else [row_length(r) for r in dataset]
            )
            grouping = {"lengths": lengths, "group_size": 50 * batch_size * dp_size}
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=SequenceParallelSampler(
                len(dataset), dp_size, dp_rank, seed=seed, shuffle=shuffle, **grouping
            ),
            collate_fn=collate,
            drop_last=self.args.dataloader_drop_last,
            **self._loader_options(),
        )

    def get_train_dataloader(self) -> DataLoader:
        strategy = self.args.train_sampling_strategy
        return self._sharded_loader(
            self.train_dataset,
            self.args.per_device_train_batch_size,
            shuffle=strategy != "sequential",
            group_by_length=strategy == "group_by_length",
        )

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return self._sharded_loader(
            dataset, self.args.per_device_eval_batch_size, shuffle=False, evaluation=True
        )

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples or "shift_labels" not in batch_samples[0]:
            return None
        local = sum(count_targets(batch["shift_labels"]) for batch in batch_samples)
        return global_sum(torch.as_tensor(local, device=device))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        inputs = dict(inputs)
        if model.training:
            for observe in self.batch_observers:
                observe(inputs)
        loss_sum, targets, outputs = self._token_loss_sum(model, inputs)
        if num_items_in_batch is None:
            num_items_in_batch = global_sum(count_targets(targets))
        loss = normalized_token_loss(loss_sum, num_items_in_batch, self.gradient_average_world)
        return (loss, outputs) if return_outputs else loss

    def _token_loss_sum(self, model: nn.Module, inputs: dict[str, torch.Tensor], hits: list | None = None):
        """(summed token losses of this rank's shard, its targets, the model outputs); `hits` receives
        the count of targets predicted exactly (argmax)."""
        targets = inputs.pop("shift_labels")
        with (
            self.embedding_noise(model, inputs),
            token_loss_head(model, targets, head_options=self.loss_head, reduction="sum", hits=hits),
        ):
            outputs = model(**inputs, use_cache=False)
        # The head returns the summed token losses as `logits` (gradients made in forward).
        return outputs.logits, targets, outputs

    # -- saving: whole checkpoints or none (train/checkpoints.py) -------------------------------

    _staging_dir: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        with staged_checkpoint(run_dir, self.state.global_step, renames=self.args.should_save) as staging:
            self._staging_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
        final = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(str(staging)):
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(final, "trainer_state.json"))
        if self.args.should_save:
            # The base class rotated inside the staging folder, where only this checkpoint lives.
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    # -- resuming: every checkpoint read runs under the weights_only allow-list --------------------

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint and self.is_deepspeed_enabled:
            # DeepSpeed's engine loads its states from inside the training loop.
            with safe_checkpoint_loading(resume_from_checkpoint):
                return super().train(resume_from_checkpoint, *args, **kwargs)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with safe_checkpoint_loading(resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_rng_state(self, checkpoint):
        with safe_checkpoint_loading(checkpoint):
            super()._load_rng_state(checkpoint)
        if checkpoint is not None and os.path.isfile(self._rank_state_file(checkpoint)):
            self.load_rank_state(torch.load(self._rank_state_file(checkpoint), weights_only=True))

    def _load_optimizer_and_scheduler(self, checkpoint):
        with safe_checkpoint_loading(checkpoint):
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _load_scaler(self, checkpoint):
        with safe_checkpoint_loading(checkpoint):
            return super()._load_scaler(checkpoint)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs only, not evaluation ones
            for source in self.metric_sources:
                logs = {**logs, **source.metrics()}
        super().log(logs, start_time)

    # -- evaluation: every held-out row once, one reduction per evaluation (train/evaluation.py) ----

    def evaluation_terms(self, model: nn.Module, inputs: dict[str, torch.Tensor]):
        """(loss sum, item count) of one evaluation batch on this rank, before any reduction."""
        hits: list | None = [] if self.compute_accuracy else None
        loss_sum, targets, _ = self._token_loss_sum(model, dict(inputs), hits)
        count = count_targets(targets)
        if hits is not None:
            self.eval_metrics.add("accuracy", sum(hits), count)
        return loss_sum, count

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = dict(inputs)
        self.padding_batch = inputs.pop(PADDING_BATCH, False)
        inputs = self._prepare_inputs(inputs)
        try:
            with torch.no_grad():
                total, count = self.evaluation_terms(model, inputs)
        finally:
            self.padding_batch = False
        self.eval_metrics.add("loss", total, count)
        # No per-batch loss for the base loop to gather: `evaluation_loop` reports the exact mean.
        return None, None, None

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix: str = "eval",
    ):
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self.eval_metrics.metrics().items()})
        return output

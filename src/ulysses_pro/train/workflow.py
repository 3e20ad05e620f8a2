"""The shared run of every stage: data, model, SP, trainer, outputs; stages differ in trainer and collator."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from functools import partial

import torch

from ..config import ConfigError, RunConfig
from ..data.collators import KtoCollator, PaddingCollator, PairwiseCollator
from ..data.pipeline import build_datasets
from ..engines.fsdp2 import shard_model
from ..models.attention import (
    apply_sequence_parallel,
    attention_heads,
    isolate_packed_documents,
    unsharded_attention,
)
from ..models.families import routes_experts
from ..models.loader import compute_dtype_for, load_model, load_tokenizer
from ..models.memory_stack import apply_memory_stack
from ..models.wrappers import unwrap_model
from ..parallel.mesh import SequenceParallelLayout, init_sequence_parallel
from ..pro.debug import DebugCallback, enable_debug_logging
from ..pro.gradient_guard import GradientGuard
from .checkpoints import last_checkpoint
from .generation import sample_answers
from .plotting import plot_loss
from .preflight import packs_separate_documents, preflight
from .reference import ReferenceModel, partitioned_for_inference
from .trainer import UlyssesTrainer
from .vision import text_only, vision_collator, wire_vision_model

logger = logging.getLogger(__name__)


def resolve_resume(config: RunConfig) -> str | None:
    """Explicit resume_from_checkpoint wins; else resume the last checkpoint unless overwrite_output_dir."""
    explicit = config.training.resume_from_checkpoint
    if explicit:
        return explicit
    found = last_checkpoint(config.training.output_dir)
    if found is not None and not config.overwrite_output_dir:
        logger.info("resuming from %s (set overwrite_output_dir: true to start over)", found)
        return str(found)
    return None


def setup_sequence_parallel(config: RunConfig, model) -> tuple[SequenceParallelLayout | None, str | None]:
    """Create the SP groups and route attention through them: (layout, the attention implementation
    replaced). At SP=1 no layout; packed documents are kept apart (`isolate_packed_documents`)."""
    parallel = config.parallel
    size = parallel.sequence_parallel_size
    if size == 1:
        return None, isolate_packed_documents(model) if packs_separate_documents(config) else None
    # preflight has checked the split against the world size and the model's heads.
    # Without attention (a pure Mamba model) only the recurrent layers split: any head count does.
    heads, kv_heads = attention_heads(model) or (size, size)
    try:
        layout = init_sequence_parallel(
            size,
            parallel.sequence_parallel_mode,
            num_heads=heads,
            num_kv_heads=kv_heads,
            ulysses_degree=parallel.ulysses_degree,
            timeout=config.training.ddp_timeout_delta,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    logger.info("sequence parallel: %s", layout.describe())
    return layout, apply_sequence_parallel(model, layout)


def allow_idle_experts(config: RunConfig, model) -> None:
    """Mixture-of-experts under DDP: an expert that no token of a rank's batch reaches gets no
    gradient there, and DDP, waiting for every gradient, stops the job. DDP then has to look for
    unused parameters (they count as zero, so the averaged gradients are unchanged), which it can
    only do with non-reentrant checkpointing (reentrant checkpointing marks a parameter twice)."""
    args = config.training
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or not args.do_train or not routes_experts(unwrap_model(model).config):
        return
    if config.origins.get("ddp_find_unused_parameters") and not args.ddp_find_unused_parameters:
        raise ConfigError(
            f"{config.origins['ddp_find_unused_parameters']}: ddp_find_unused_parameters: false: this model "
            "routes tokens to experts, and an expert that gets no token on a rank would stop DDP; remove the key"
        )
    if not args.ddp_find_unused_parameters or config.model.use_reentrant_gc:
        logger.info("routed experts: DDP looks for unused parameters; checkpointing is non-reentrant")
    args.ddp_find_unused_parameters = True
    config.model.use_reentrant_gc = False


def layers_sharing_weights(model) -> bool:
    """Whether one parameter object serves several decoder layers (Zamba2's shared transformer block)."""
    names: dict[int, set[str]] = {}
    for name, param in unwrap_model(model).named_parameters(remove_duplicate=False):
        layer = re.search(r"layers\.(\d+)\.", name)
        if layer is not None:
            names.setdefault(id(param), set()).add(layer.group(1))
    return any(len(layers) > 1 for layers in names.values())


def checkpoint_shared_layers_without_reentry(config: RunConfig, model) -> None:
    """Reentrant checkpointing recomputes a layer in a backward of its own, so DDP sees a parameter
    that several layers share become ready more than once and stops; non-reentrant checkpointing
    accumulates its gradient in the one backward."""
    if config.model.use_reentrant_gc and layers_sharing_weights(model):
        logger.info("decoder layers share weights: checkpointing is non-reentrant")
        config.model.use_reentrant_gc = False


def pro_features(config: RunConfig, layout: SequenceParallelLayout | None) -> dict:
    """Trainer keyword arguments for the opt-in Pro features (debug logging, gradient guard)."""
    callbacks, sources, observers = [], [], []
    if config.pro.debug:
        debug = DebugCallback(layout)
        callbacks.append(debug)
        observers.append(debug.observe_batch)
    if config.pro.guard_enabled:
        guard = GradientGuard(config.pro, seed=config.training.seed)
        callbacks.append(guard)
        sources.append(guard)
        logger.info("gradient guard on: %s", ", ".join(sorted(guard.strategies)))
    return {"callbacks": callbacks, "metric_sources": sources, "batch_observers": observers}


def run_token_stage(config: RunConfig, callbacks: list | None = None) -> UlyssesTrainer:
    """Train (and optionally evaluate) a pt or sft stage; returns the finished trainer."""
    return run_workflow(config, callbacks, UlyssesTrainer, PaddingCollator)


def run_sequence_stage(
    config: RunConfig,
    callbacks: list | None,
    trainer_class: type[UlyssesTrainer],
    *,
    needs_reference: bool = False,
    prepare_model: Callable | None = None,
    trainer_kwargs: dict | None = None,
) -> UlyssesTrainer:
    """Train a whole-sequence-loss stage (dpo, kto, rm) with its trainer and, if needed, a reference."""
    collator = KtoCollator if config.finetuning.stage == "kto" else PairwiseCollator
    return run_workflow(
        config,
        callbacks,
        trainer_class,
        collator,
        needs_reference=needs_reference,
        prepare_model=prepare_model,
        trainer_kwargs=trainer_kwargs,
    )


def load_reference(config: RunConfig, policy, tokenizer) -> ReferenceModel:
    """The reference of DPO-family and KTO losses (see train/reference.py)."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    loaded = None
    zero3_copy = is_deepspeed_zero3_enabled() and config.finetuning.finetuning_type != "lora"
    if config.finetuning.ref_model or zero3_copy:
        # Under ZeRO-3 the policy's weights are partitions, so a deepcopy would hold empty tensors:
        # the reference is loaded again (the same initial weights) and partitioned the same way.
        ref_args = (
            dataclasses.replace(
                config.model, model_name_or_path=config.finetuning.ref_model, adapter_name_or_path=None
            )
            if config.finetuning.ref_model
            else config.model
        )
        loaded = load_model(ref_args, config.finetuning, tokenizer, config.training, is_trainable=False)
        if is_deepspeed_zero3_enabled():
            loaded = partitioned_for_inference(loaded, config.training)
    compute_dtype = compute_dtype_for(config.training, config.finetuning)
    mixed = compute_dtype != torch.float32 and not config.finetuning.pure_bf16
    return ReferenceModel.build(policy, loaded, compute_dtype, autocast_dtype=compute_dtype if mixed else None)


def weights_are_sharded(trainer: UlyssesTrainer) -> bool:
    """ZeRO-3 and FSDP2 hold a shard of each weight per rank: a forward on rank 0 alone (the sample
    generations) would read empty partitions or wait forever for the other ranks."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return bool(trainer.sharded_by_fsdp2 or is_deepspeed_zero3_enabled())


def final_evaluation(trainer: UlyssesTrainer) -> dict[str, float]:
    """The finished model's held-out metrics: those of the evaluation transformers' eval strategy
    ran at the last step when there was one (it evaluates there under `eval_strategy: steps`; a
    second pass would repeat it, a whole set of held-out rollouts in the RL stages), else a new one.
    With load_best_model_at_end the model changed after that evaluation, so it runs again."""
    state = trainer.state
    last = next((entry for entry in reversed(state.log_history) if "eval_runtime" in entry), None)
    if last is not None and last.get("step") == state.global_step and not trainer.args.load_best_model_at_end:
        return {key: value for key, value in last.items() if key != "step"}
    return trainer.evaluate()


def run_workflow(
    config: RunConfig,
    callbacks: list | None,
    trainer_class: type[UlyssesTrainer],
    collator_class: type,
    *,
    needs_reference: bool = False,
    prepare_model: Callable | None = None,
    trainer_kwargs: dict | None = None,
    build_data: Callable | None = None,
    configure_trainer: Callable | None = None,
) -> UlyssesTrainer:
    """Build data, model, SP groups and trainer; train, save, evaluate; return the finished trainer.
    `build_data(data_args, tokenizer, seed)` replaces the token datasets (RL prompts);
    `configure_trainer(trainer, bundle, config)` runs once the trainer and its SP wiring exist."""
    args = config.training
    if config.pro.debug:
        enable_debug_logging()
    stage = config.finetuning.stage
    tokenizer = load_tokenizer(config.model)
    preflight(config, args.world_size, tokenizer)  # before any row is tokenized or any weight loaded
    started = time.perf_counter()
    bundle = (build_data or partial(build_datasets, stage=stage))(config.data, tokenizer, seed=args.seed)
    logger.info("data ready in %.1fs", time.perf_counter() - started)
    model = load_model(config.model, config.finetuning, tokenizer, args, is_trainable=args.do_train)
    allow_idle_experts(config, model)
    checkpoint_shared_layers_without_reentry(config, model)
    if prepare_model is not None:
        model = prepare_model(model, config)
    loss_head = apply_memory_stack(model, config.model, config.memory, training=args.do_train)
    layout, plain_attention = setup_sequence_parallel(config, model)
    wire_vision_model(config, model, layout)
    extra = dict(trainer_kwargs or {})
    if needs_reference:
        # After SP is wired: the reference runs the policy's (sequence-parallel) attention.
        extra["reference"] = load_reference(config, model, tokenizer)
    if config.fsdp is not None:
        # Last, so the memory stack, SP wiring and a reference copy all see the whole model.
        shard_model(model, config.fsdp, args, pure_bf16=config.finetuning.pure_bf16)
        frozen = getattr(extra.get("reference"), "frozen", None)
        if frozen is not None:  # a frozen copy or ref_model: sharded the same way, no optimizer
            shard_model(frozen, config.fsdp, args, pure_bf16=config.finetuning.pure_bf16)
    pro = pro_features(config, layout)
    trainer = trainer_class(
        model=model,
        sp_layout=layout,
        args=args,
        train_dataset=bundle.train,
        eval_dataset=bundle.eval,
        data_collator=vision_collator(
            config,
            model,
            tokenizer,
            collator_class(tokenizer.pad_token_id, document_lengths=bool(args.neftune_noise_alpha)),
            layout,
        ),
        processing_class=tokenizer,
        # The guard first: later callbacks (and the optimizer) see the gradients it leaves.
        callbacks=[*pro["callbacks"], *(callbacks or [])],
        metric_sources=pro["metric_sources"],
        batch_observers=pro["batch_observers"],
        loss_head=loss_head,
        loraplus=(
            (config.finetuning.loraplus_lr_ratio, config.finetuning.loraplus_lr_embedding)
            if config.finetuning.loraplus_lr_ratio
            else None
        ),
        compute_accuracy=config.finetuning.compute_accuracy,
        **extra,
    )
    # What SP replaced, so an owner (UlyssesTrainingManager.cleanup) can put it back.
    trainer.replaced_attention = plain_attention
    if configure_trainer is not None:
        configure_trainer(trainer, bundle, config)
    # A reward model scores answers; it does not write them.
    bundle.sample_prompts = text_only(bundle.sample_prompts)
    show_samples = (
        trainer.is_world_process_zero()
        and bundle.sample_prompts
        and bundle.template is not None
        and args.do_train
        and stage != "rm"
        and not weights_are_sharded(trainer)
    )
    if show_samples:
        with unsharded_attention(model, plain_attention):
            sample_answers(model, tokenizer, bundle.template, bundle.sample_prompts, "before training")
    if args.do_train:
        try:
            result = trainer.train(resume_from_checkpoint=resolve_resume(config))
        except KeyboardInterrupt:
            if trainer.args.world_size == 1:
                # Nothing is lost: an interrupted run leaves a checkpoint the next run resumes from.
                trainer._save_checkpoint(trainer.model, trial=None)
                logger.warning("interrupted: checkpoint saved in %s", args.output_dir)
            raise
        trainer.save_model()
        trainer.save_state()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
    if show_samples:
        with unsharded_attention(model, plain_attention):
            sample_answers(model, tokenizer, bundle.template, bundle.sample_prompts, "after training")
    if args.do_eval and bundle.eval is not None:
        metrics = final_evaluation(trainer)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if args.do_train and config.finetuning.plot_loss and trainer.is_world_process_zero():
        # After the final evaluation, so its point is on the curves. reward: the RL stages, as
        # LLaMA-Factory plots PPO's, with the held-out reward beside it.
        for key in ("loss", "eval_loss", "reward"):
            held_out = "eval_reward" if key == "reward" else None
            path = plot_loss(trainer.state.log_history, args.output_dir, key, held_out)
            if path is not None:
                logger.info("loss plot written to %s", path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return trainer

"""Cross-field checks that must fail before any model or dataset is touched."""

from __future__ import annotations

import importlib.util
from typing import Any

from .args import (
    FINETUNING_TYPES,
    FLASH_ATTN_CHOICES,
    GUARD_STRATEGIES,
    IMPLEMENTED_STAGES,
    LOSS_NORMALIZATIONS,
    MIX_STRATEGIES,
    PREFERENCE_LOSSES,
    REWARD_MODEL_TYPES,
    SEQUENCE_PARALLEL_MODES,
    STAGES,
    DataArguments,
    FinetuningArguments,
    GeneratingArguments,
    MemoryArguments,
    ModelArguments,
    ParallelArguments,
    ProArguments,
)
from .parsing import ConfigError
from .rollout_validation import validate_rollouts, validate_sharded_decoding

# transformers' batch_rebalance spreads samples over DP ranks by cost, which would break the shared
# order SP groups rely on.
SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length")


def validate(
    model: ModelArguments,
    data: DataArguments,
    finetuning: FinetuningArguments,
    parallel: ParallelArguments,
    training: dict[str, Any],
    origins: dict[str, str],
    pro: ProArguments | None = None,
    memory: MemoryArguments | None = None,
    generating: GeneratingArguments | None = None,
) -> None:
    """Raise ConfigError naming the key at fault and the fix."""

    def fail(key: str, message: str) -> None:
        where = origins.get(key, "default")
        raise ConfigError(f"{where}: {key}: {message}")

    def choose(key: str, value: Any, choices: tuple) -> None:
        if value not in choices:
            fail(key, f"{value!r} is not one of {', '.join(map(str, choices))}")

    choose("stage", finetuning.stage, STAGES)
    if finetuning.stage not in IMPLEMENTED_STAGES:
        fail(
            "stage",
            f"stage {finetuning.stage!r} is not available yet in this version of Ulysses Pro; "
            f"available stages: {', '.join(IMPLEMENTED_STAGES)}",
        )
    choose("finetuning_type", finetuning.finetuning_type, FINETUNING_TYPES)
    choose("flash_attn", model.flash_attn, FLASH_ATTN_CHOICES)
    if model.flash_attn == "fa3" and importlib.util.find_spec("flash_attn_interface") is None:
        fail(
            "flash_attn",
            "fa3 needs FlashAttention-3 (the `flash_attn_interface` module of flash-attn's "
            "hopper build), which is not installed; use fa2, sdpa or auto",
        )
    choose("sequence_parallel_mode", parallel.sequence_parallel_mode, SEQUENCE_PARALLEL_MODES)
    choose("mix_strategy", data.mix_strategy, MIX_STRATEGIES)
    if pro is not None:
        _validate_pro(pro, fail)
    if memory is not None:
        _validate_memory(model, memory, fail)
    _validate_media(data, fail)
    _validate_preference(finetuning, data, fail)
    _validate_grpo(finetuning, data, training, fail)
    _validate_ppo(finetuning, data, training, fail)
    validate_rollouts(finetuning, generating, fail)
    validate_sharded_decoding(finetuning, parallel, training, fail)
    if finetuning.pure_bf16 and training.get("deepspeed"):
        # LLaMA-Factory refuses the same: ZeRO-3 keeps its own fp32 master weights.
        fail(
            "pure_bf16",
            "is incompatible with DeepSpeed (its bf16 section keeps fp32 master weights); remove one",
        )
    if finetuning.compute_accuracy and finetuning.stage not in ("sft", "pt"):
        fail("compute_accuracy", f"reports next-token accuracy for sft and pt, not stage {finetuning.stage}")
    if finetuning.loraplus_lr_ratio is not None and (
        finetuning.finetuning_type != "lora" or finetuning.loraplus_lr_ratio <= 0
    ):
        fail("loraplus_lr_ratio", "needs finetuning_type: lora and a positive ratio (e.g. 16)")
    if finetuning.pref_split_backward and training.get("deepspeed"):
        fail(
            "pref_split_backward",
            "needs two backward passes per micro-batch, which DeepSpeed's engine refuses; use FSDP or remove it",
        )

    do_train = training.get("do_train", False)
    if do_train and not model.model_name_or_path:
        fail("model_name_or_path", "required for training; give a local model directory or tiny:llama")
    if do_train and not data.dataset:
        fail("dataset", "required when do_train is true; name one or more entries of dataset_info.json")
    if training.get("do_predict"):
        fail("do_predict", "prediction is not supported; use do_eval or run inference separately")
    if finetuning.lora_rank < 1:
        fail("lora_rank", f"must be a positive integer, got {finetuning.lora_rank}")
    if finetuning.lora_alpha is not None and finetuning.lora_alpha <= 0:
        fail("lora_alpha", f"must be positive, got {finetuning.lora_alpha}")
    if not 0.0 <= finetuning.lora_dropout < 1.0:
        fail("lora_dropout", f"must be in [0, 1), got {finetuning.lora_dropout}")
    if finetuning.freeze_trainable_layers == 0:
        fail(
            "freeze_trainable_layers", "0 trains nothing; use a positive (last n) or negative (first n) count"
        )
    if data.cutoff_len < 4:
        fail("cutoff_len", f"must be at least 4 tokens, got {data.cutoff_len}")
    if data.max_samples is not None and data.max_samples < 1:
        fail("max_samples", f"must be a positive integer, got {data.max_samples}")
    if data.val_size < 0 or (data.val_size >= 1 and not float(data.val_size).is_integer()):
        fail("val_size", f"give a fraction in [0, 1) or a whole number of rows, got {data.val_size}")
    if data.val_size and data.eval_dataset:
        fail(
            "val_size", "val_size and eval_dataset are both set; keep one (val_size holds out training rows)"
        )
    if data.neat_packing and data.packing is False:
        fail("neat_packing", "neat_packing needs packing; remove packing: false or set neat_packing: false")
    if data.mask_history and data.train_on_prompt:
        fail("mask_history", "mask_history and train_on_prompt contradict each other; choose one")
    if data.preprocessing_num_workers is not None and data.preprocessing_num_workers < 1:
        fail("preprocessing_num_workers", f"must be a positive integer, got {data.preprocessing_num_workers}")
    if data.preprocessing_batch_size < 1:
        fail("preprocessing_batch_size", f"must be a positive integer, got {data.preprocessing_batch_size}")
    sampling = training.get("train_sampling_strategy", "random")
    if sampling not in SAMPLING_STRATEGIES:
        fail("train_sampling_strategy", f"{sampling!r} is not one of {', '.join(SAMPLING_STRATEGIES)}")
    if data.streaming:
        _validate_streaming(data, training, fail)
    alpha = training.get("neftune_noise_alpha")
    if alpha is not None and not alpha > 0:
        fail("neftune_noise_alpha", f"must be positive (NEFTune's paper uses 5 to 15), got {alpha}")
    if training.get("bf16") and training.get("fp16"):
        fail("fp16", "bf16 and fp16 are both true; keep one")
    if training.get("deepspeed"):
        if importlib.util.find_spec("deepspeed") is None:
            fail("deepspeed", "needs the deepspeed package: pip install deepspeed")
    sp = parallel.sequence_parallel_size
    if sp < 1:
        fail("sequence_parallel_size", f"must be >= 1, got {sp}")
    if parallel.ulysses_degree is not None and parallel.ulysses_degree < 1:
        fail("ulysses_degree", f"must be >= 1, got {parallel.ulysses_degree}")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if key in training and training[key] < 1:
            fail(key, f"must be >= 1, got {training[key]}")
    if training.get("learning_rate", 1.0) < 0:
        fail("learning_rate", f"must be >= 0, got {training['learning_rate']}")


def _validate_preference(finetuning: FinetuningArguments, data: DataArguments, fail) -> None:
    stage = finetuning.stage
    if stage not in ("dpo", "kto", "rm"):
        return
    if data.packing or data.neat_packing:
        fail(
            "packing" if data.packing else "neat_packing",
            f"stage {stage} scores whole sequences one per row; remove packing / neat_packing",
        )
    if stage == "rm":
        return
    if stage == "dpo":
        if finetuning.pref_loss not in PREFERENCE_LOSSES:
            fail("pref_loss", f"{finetuning.pref_loss!r} is not one of {', '.join(PREFERENCE_LOSSES)}")
        if not 0 <= finetuning.dpo_label_smoothing <= 0.5:
            fail("dpo_label_smoothing", f"must be in [0, 0.5], got {finetuning.dpo_label_smoothing}")
        for key in ("pref_ftx", "pref_bco_weight"):
            if getattr(finetuning, key) < 0:
                fail(key, f"must be >= 0, got {getattr(finetuning, key)}")
    if not finetuning.pref_beta > 0:
        fail("pref_beta", f"must be positive, got {finetuning.pref_beta}")
    for key in ("kto_chosen_weight", "kto_rejected_weight"):
        if stage == "kto" and not getattr(finetuning, key) > 0:
            fail(key, f"must be positive, got {getattr(finetuning, key)}")


def _validate_grpo(
    finetuning: FinetuningArguments, data: DataArguments, training: dict[str, Any], fail
) -> None:
    if finetuning.stage != "grpo":
        return
    if not finetuning.reward_funcs and not finetuning.reward_model:
        fail(
            "reward_funcs",
            "stage grpo needs at least one reward function, e.g. [my_rewards:exact_match], or a reward_model",
        )
    weights = finetuning.reward_weights
    if weights is not None:
        try:
            finetuning.reward_weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            fail("reward_weights", f"{weights!r}: expected a list of numbers")
        sources = len(finetuning.reward_funcs or []) + bool(finetuning.reward_model)
        if len(finetuning.reward_weights) != sources:
            fail(
                "reward_weights",
                f"{len(finetuning.reward_weights)} weights for {len(finetuning.reward_funcs or [])} reward_funcs"
                f"{' and a reward_model' if finetuning.reward_model else ''}; give one per reward",
            )
    if finetuning.reward_model:
        _validate_reward_model(finetuning, fail)
    if finetuning.num_iterations < 1:
        fail("num_iterations", f"must be >= 1, got {finetuning.num_iterations}")
    if finetuning.num_generations < 2:
        fail(
            "num_generations",
            f"must be >= 2 (group advantages compare completions), got {finetuning.num_generations}",
        )
    if finetuning.loss_normalization not in LOSS_NORMALIZATIONS:
        fail(
            "loss_normalization",
            f"{finetuning.loss_normalization!r} is not one of {', '.join(LOSS_NORMALIZATIONS)}",
        )
    if not 0 < finetuning.epsilon < 1:
        fail("epsilon", f"must be in (0, 1), got {finetuning.epsilon}")
    if finetuning.epsilon_high is not None and finetuning.epsilon_high <= 0:
        fail("epsilon_high", f"must be positive, got {finetuning.epsilon_high}")
    if finetuning.beta < 0:
        fail("beta", f"must be >= 0, got {finetuning.beta}")
    _validate_sampling_stage("grpo", data, training, fail)


def _validate_sampling_stage(stage: str, data: DataArguments, training: dict[str, Any], fail) -> None:
    """What the RL stages cannot take: rows are prompts, completions are sampled."""
    if data.packing or data.neat_packing or data.streaming:
        key = "packing" if data.packing else "neat_packing" if data.neat_packing else "streaming"
        fail(key, f"stage {stage} samples completions per prompt; remove packing / neat_packing / streaming")
    if training.get("neftune_noise_alpha"):
        fail(
            "neftune_noise_alpha",
            f"NEFTune is not applied to sampled completions in stage {stage}; remove it",
        )


def _validate_reward_model(finetuning: FinetuningArguments, fail) -> None:
    if finetuning.reward_model_type == "api":
        fail("reward_model_type", "`api` (a reward server) is not supported; use lora or full")
    if finetuning.reward_model_type not in REWARD_MODEL_TYPES:
        fail(
            "reward_model_type",
            f"{finetuning.reward_model_type!r} is not one of {', '.join(REWARD_MODEL_TYPES)}",
        )
    if finetuning.reward_model_type == "lora" and finetuning.finetuning_type != "lora":
        # LLaMA-Factory refuses the same: a LoRA reward model is a second adapter on the policy.
        fail("reward_model_type", f"a {finetuning.finetuning_type} policy needs reward_model_type: full")
    if finetuning.reward_model_adapters and finetuning.reward_model_type != "full":
        fail(
            "reward_model_adapters",
            "only a full reward model takes adapters; reward_model is the adapter for lora",
        )


def _validate_ppo(
    finetuning: FinetuningArguments, data: DataArguments, training: dict[str, Any], fail
) -> None:
    if finetuning.stage != "ppo":
        return
    if not finetuning.reward_model:
        fail("reward_model", "stage ppo needs a reward model: a folder the rm stage wrote")
    _validate_reward_model(finetuning, fail)
    for key in ("ppo_buffer_size", "ppo_epochs"):
        if getattr(finetuning, key) < 1:
            fail(key, f"must be >= 1, got {getattr(finetuning, key)}")
    if not finetuning.ppo_target > 0:
        fail("ppo_target", f"must be positive, got {finetuning.ppo_target}")
    _validate_sampling_stage("ppo", data, training, fail)


def _validate_pro(pro: ProArguments, fail) -> None:
    if pro.adjust_lr is not None and not pro.adjust_lr > 0:
        fail("adjust_lr", f"{pro.adjust_lr} must be a positive factor")
    unknown = sorted(set(pro.guard_strategies()) - set(GUARD_STRATEGIES))
    if unknown:
        fail(
            "gradient_guard_strategies",
            f"unknown strategy {', '.join(unknown)}; choose from {', '.join(GUARD_STRATEGIES)}",
        )
    for key in (
        "gradient_guard_vanishing_threshold",
        "gradient_guard_small_grad_threshold",
        "gradient_guard_small_grad_scale",
        "gradient_guard_lr_boost",
        "gradient_guard_clip_threshold",
    ):
        if not getattr(pro, key) > 0:
            fail(key, f"{getattr(pro, key)} must be positive")
    if pro.gradient_guard_noise_std < 0:
        fail("gradient_guard_noise_std", "must be >= 0")


def _validate_streaming(data: DataArguments, training: dict[str, Any], fail) -> None:
    if training.get("do_train") and training.get("max_steps", -1) <= 0:
        fail("max_steps", "streaming: true needs max_steps > 0 (a stream has no length to count epochs by)")
    if data.val_size and not float(data.val_size).is_integer():
        fail(
            "val_size", f"with streaming, give a number of rows to hold out, not a fraction ({data.val_size})"
        )
    if data.tokenized_path:
        fail(
            "tokenized_path", "a streamed dataset is tokenized on the fly; remove tokenized_path or streaming"
        )
    if data.buffer_size < 1:
        fail("buffer_size", f"must be a positive number of rows, got {data.buffer_size}")
    if training.get("train_sampling_strategy", "random") != "random":
        fail("train_sampling_strategy", "a stream is shuffled by its buffer; remove group_by_length")


def _validate_media(data: DataArguments, fail) -> None:
    """LLaMA-Factory's own checks of its media keys."""
    for kind in ("image", "video"):
        high, low = getattr(data, f"{kind}_max_pixels"), getattr(data, f"{kind}_min_pixels")
        if low < 1 or high < low:
            fail(f"{kind}_max_pixels", f"must be >= {kind}_min_pixels >= 1, got {high} and {low}")
    if data.video_fps <= 0 or data.video_maxlen < 1:
        fail("video_fps", f"video_fps must be > 0 and video_maxlen >= 1, got {data.video_fps}, {data.video_maxlen}")


def _validate_memory(model: ModelArguments, memory: MemoryArguments, fail) -> None:

    if memory.gradient_checkpointing_offload and model.disable_gradient_checkpointing:
        fail(
            "gradient_checkpointing_offload",
            "offloads the inputs gradient checkpointing keeps; it needs gradient checkpointing "
            "(remove disable_gradient_checkpointing / gradient_checkpointing: false)",
        )
    if memory.tiled_mlp_tile_tokens < 1:
        fail(
            "tiled_mlp_tile_tokens",
            f"must be a positive number of tokens, got {memory.tiled_mlp_tile_tokens}",
        )
    if memory.loss_chunk_tokens is not None and memory.loss_chunk_tokens < 1:
        fail("loss_chunk_tokens", f"must be a positive number of tokens, got {memory.loss_chunk_tokens}")
    if model.enable_liger_kernel:
        if importlib.util.find_spec("liger_kernel") is None:
            fail(
                "enable_liger_kernel",
                "needs the liger-kernel package (pip install liger-kernel), which is not installed",
            )
        import torch

        if not torch.cuda.is_available():
            fail("enable_liger_kernel", "liger-kernel's Triton kernels need a CUDA GPU; none is visible here")

"""Argument groups, with LLaMA-Factory's key names, meanings and defaults.

HF `TrainingArguments` fields are not repeated here: the loader routes them to
`transformers.Seq2SeqTrainingArguments` (the class LLaMA-Factory itself uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo")
IMPLEMENTED_STAGES = ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo")
REWARD_MODEL_TYPES = ("lora", "full")  # LLaMA-Factory's third, `api`, is refused by name
LOSS_NORMALIZATIONS = ("token", "sequence")
ROLLOUT_ENGINES = ("batched", "sequential", "sequence_parallel")  # train/rl/engines; vLLM (use_vllm) is refused by name
VLLM_MODES = ("colocate", "server")  # TRL's
PREFERENCE_LOSSES = ("sigmoid", "hinge", "ipo", "simpo", "orpo")
FINETUNING_TYPES = ("full", "freeze", "lora")
SEQUENCE_PARALLEL_MODES = ("auto", "ulysses", "zigzag-ring", "hybrid")
FLASH_ATTN_CHOICES = ("auto", "disabled", "sdpa", "fa2", "fa3", "eager")
MIX_STRATEGIES = ("concat", "interleave_under", "interleave_over")


@dataclass
class ModelArguments:
    """Which model to load and how."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local model directory, or `tiny:<arch>` for a built-in random tiny model."},
    )
    adapter_name_or_path: str | None = field(
        default=None, metadata={"help": "Comma-separated LoRA adapter directories to load first."}
    )
    trust_remote_code: bool = False
    cache_dir: str | None = None
    model_revision: str = "main"
    hf_hub_token: str | None = None
    flash_attn: str = field(
        default="auto",
        metadata={"help": "auto | disabled | sdpa | fa2 | fa3 | eager (LLaMA-Factory meanings)."},
    )
    train_from_scratch: bool = field(
        default=False, metadata={"help": "Randomly initialise the model from its config (no weights loaded)."}
    )
    enable_liger_kernel: bool = field(
        default=False,
        metadata={"help": "Use liger-kernel's fused RMSNorm, SwiGLU, RoPE and linear cross-entropy (CUDA)."},
    )
    low_cpu_mem_usage: bool = True
    use_fast_tokenizer: bool = True
    add_tokens: str | None = field(
        default=None, metadata={"help": "Comma-separated tokens to add (resizes the vocabulary)."}
    )
    add_special_tokens: str | None = field(
        default=None, metadata={"help": "Comma-separated special tokens to add (resizes the vocabulary)."}
    )
    resize_vocab: bool = field(
        default=False,
        metadata={"help": "Grow the embeddings to the tokenizer (noisy-mean initialised rows)."},
    )
    upcast_layernorm: bool = field(
        default=False,
        metadata={"help": "Keep normalisation weights in fp32 when the model loads in half precision."},
    )
    disable_gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Gradient checkpointing of every decoder layer is on unless this is set."},
    )
    use_reentrant_gc: bool = field(
        default=True,
        metadata={"help": "Reentrant (torch's default in LLaMA-Factory) gradient checkpointing."},
    )


@dataclass
class DataArguments:
    """Which datasets, and how rows become token ids."""

    template: str | None = field(
        default=None,
        metadata={
            "help": "A LLaMA-Factory template name (its tokens exactly); omitted: the tokenizer's own."
        },
    )
    enable_thinking: bool | None = field(
        default=True, metadata={"help": "Reasoning templates (qwen3): train the empty thought block."}
    )
    preserve_thinking: bool = False
    tool_format: str | None = None
    dataset: str | None = field(
        default=None, metadata={"help": "Comma-separated names from dataset_info.json."}
    )
    eval_dataset: str | None = None
    dataset_dir: str = "data"
    cutoff_len: int = 2048
    max_samples: int | None = None
    val_size: float = 0.0
    train_on_prompt: bool = False
    mask_history: bool = False
    packing: bool | None = field(default=None, metadata={"help": "Default: on for pt, off otherwise."})
    neat_packing: bool = False
    preprocessing_num_workers: int | None = None
    preprocessing_batch_size: int = 1000
    overwrite_cache: bool = False
    tokenized_path: str | None = None
    streaming: bool = False
    buffer_size: int = 16384
    mix_strategy: str = "concat"
    interleave_probs: str | None = None
    default_system: str | None = None
    ignore_pad_token_for_loss: bool = True
    # Media (LLaMA-Factory keeps the size keys with its model arguments; here they shape the data).
    media_dir: str | None = field(
        default=None, metadata={"help": "Folder the images / videos paths are relative to. Default: dataset_dir."}
    )
    image_max_pixels: int = 768 * 768
    image_min_pixels: int = 32 * 32
    video_max_pixels: int = 256 * 256
    video_min_pixels: int = 16 * 16
    video_fps: float = 2.0
    video_maxlen: int = 128
    skip_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Skip malformed rows (counted and logged at the end) instead of stopping at the first."
        },
    )


@dataclass
class FinetuningArguments:
    """Stage and which parameters train."""

    stage: str = "sft"
    finetuning_type: str = "lora"
    lora_rank: int = 8
    lora_alpha: int | None = field(default=None, metadata={"help": "Default: 2 x lora_rank."})
    lora_dropout: float = 0.0
    lora_target: str = field(default="all", metadata={"help": "Comma-separated module names, or `all`."})
    additional_target: str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    loraplus_lr_ratio: float | None = field(
        default=None, metadata={"help": "LoRA+: LoRA B matrices learn this many times faster than A."}
    )
    loraplus_lr_embedding: float = 1e-6
    create_new_adapter: bool = field(
        default=False,
        metadata={"help": "Merge adapter_name_or_path into the weights and train a fresh LoRA on top."},
    )
    compute_accuracy: bool = field(
        default=False, metadata={"help": "Evaluation also reports eval_accuracy (next-token argmax, sft/pt)."}
    )
    pure_bf16: bool = field(
        default=False, metadata={"help": "Weights, gradients and optimizer state all in bf16 (no fp32 copy)."}
    )
    freeze_trainable_layers: int = field(
        default=2, metadata={"help": "Positive: the last n layers train; negative: the first n."}
    )
    freeze_trainable_modules: str = "all"
    freeze_extra_modules: str | None = None
    # Vision-language models (LLaMA-Factory's keys and defaults; models/multimodal/freezing.py).
    freeze_vision_tower: bool = True
    freeze_multi_modal_projector: bool = True
    freeze_language_model: bool = False
    plot_loss: bool = False
    # dpo / kto / rm (LLaMA-Factory's keys and defaults).
    pref_beta: float = 0.1
    pref_ftx: float = 0.0
    pref_loss: str = "sigmoid"
    pref_bco_weight: float = 0.0
    dpo_label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    pref_split_backward: bool = field(
        default=False,
        metadata={
            "help": "DPO: back-propagate chosen and rejected answers one after the other (one extra forward, "
            "half the activation memory)."
        },
    )
    kto_chosen_weight: float = 1.0
    kto_rejected_weight: float = 1.0
    ref_model: str | None = None
    # ppo (LLaMA-Factory's keys, meanings and defaults).
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "PPO: the reward model, a folder our `rm` stage wrote (LoRA adapter or full model, with "
            "value_head.safetensors)."
        },
    )
    reward_model_adapters: str | None = None
    reward_model_type: str = field(
        default="lora", metadata={"help": "PPO: `lora` (an adapter on the policy's base) or `full`."}
    )
    ppo_buffer_size: int = field(
        default=1, metadata={"help": "PPO: micro-batch groups (of GA micro-batches) rolled out per PPO step."}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "PPO: passes over each PPO step's rollouts."})
    ppo_score_norm: bool = field(
        default=False, metadata={"help": "PPO: normalise reward-model scores by their running mean and std."}
    )
    ppo_target: float = field(default=6.0, metadata={"help": "PPO: target KL of the adaptive KL controller."})
    ppo_whiten_rewards: bool = field(
        default=False, metadata={"help": "PPO: whiten the per-token rewards before computing advantages."}
    )
    # grpo (our stage; TRL's GRPOTrainer key names where it has one).
    num_generations: int = field(default=8, metadata={"help": "GRPO: completions sampled per prompt."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "GRPO: reward functions `package.module:function` or `path/to/file.py:function`, "
            "each called with prompts, completions and the row's other columns; their rewards add up."
        },
    )
    reward_weights: list[float] | None = field(
        default=None, metadata={"help": "GRPO: one weight per reward function (default: all 1)."}
    )
    num_iterations: int = field(
        default=1,
        metadata={"help": "GRPO: updates per batch of rollouts (> 1: the ratio is clipped, TRL's key)."},
    )
    epsilon: float = field(default=0.2, metadata={"help": "GRPO: the ratio's lower clip, 1 - epsilon."})
    epsilon_high: float | None = field(
        default=None,
        metadata={"help": "GRPO: the ratio's upper clip, 1 + epsilon_high (DAPO); default epsilon."},
    )
    beta: float = field(
        default=0.0, metadata={"help": "GRPO: weight of the k3 KL to the reference; 0 = none."}
    )
    scale_rewards: bool = field(
        default=True,
        metadata={"help": "GRPO: divide advantages by the group's reward std (false: Dr. GRPO)."},
    )
    loss_normalization: str = field(
        default="token",
        metadata={
            "help": "GRPO: `token` = sum of response-token losses over the global number of response tokens "
            "(DAPO); `sequence` = each response's token mean, over the global number of responses."
        },
    )
    # DAPO's overlong handling (grpo; train/rl/overlong.py), TRL's and verl's key names.
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "GRPO: completions cut by the length limit add nothing to the loss."}
    )
    overlong_buffer_len: int = field(
        default=0, metadata={"help": "GRPO: overlong penalty over the last N tokens."}
    )
    overlong_penalty_factor: float = field(
        default=1.0, metadata={"help": "GRPO: the overlong punishment at the limit is -factor."}
    )
    # rollouts (grpo and ppo): how completions are sampled (train/rl/engines).
    rollout_engine: str = field(
        default="batched", metadata={"help": "GRPO/PPO: batched, sequential or sequence_parallel (long rollouts)."}
    )
    rollout_batch_size: int = field(
        default=64, metadata={"help": "GRPO/PPO: sequences per generate call of the batched engine."}
    )
    use_vllm: bool = field(default=False, metadata={"help": "GRPO/PPO: vLLM rollouts (TRL's key); refused."})
    vllm_mode: str = field(default="colocate", metadata={"help": "With use_vllm: colocate or server."})
    eval_do_sample: bool = field(default=False, metadata={"help": "GRPO/PPO eval: sample, not greedy."})


@dataclass
class ParallelArguments:
    """Sequence parallelism: group size, mode and (hybrid) ulysses degree."""

    sequence_parallel_size: int = 1
    sequence_parallel_mode: str = "auto"
    ulysses_degree: int | None = None


@dataclass
class MemoryArguments:
    """Ulysses Pro's long-context memory options (on top of LLaMA-Factory's gradient checkpointing)."""

    gradient_checkpointing_offload: bool = field(
        default=False,
        metadata={"help": "Keep the checkpointed layer inputs in pinned host memory until backward (exact)."},
    )
    efficient_rms_norm: bool = field(
        default=True,
        metadata={
            "help": "RMSNorm keeps only its input and a per-token scale for backward (forward bit-identical)."
        },
    )
    tiled_mlp: bool = field(
        default=False,
        metadata={"help": "Run each MLP over sequence tiles, recomputed per tile in backward (exact)."},
    )
    tiled_mlp_tile_tokens: int = field(default=4096, metadata={"help": "Tokens per MLP tile."})
    loss_chunk_tokens: int | None = field(
        default=None,
        metadata={"help": "Tokens per chunk of the tiled loss head (default: a 128 MiB fp32 logits budget)."},
    )


GUARD_STRATEGIES = ("noise", "small_grad_scaling", "lr_boost", "centralization", "clipping")


@dataclass
class ProArguments:
    """The Pro switches: `--debug`, `--adjust-lr [F]` and the gradient guard's strategies and thresholds."""

    debug: bool = field(
        default=False, metadata={"help": "Verbose per-rank logs; turns the gradient guard on."}
    )
    adjust_lr: float | None = field(
        default=None, metadata={"help": "Multiply learning_rate by this factor (`--adjust-lr` alone: 1.0)."}
    )
    gradient_guard: bool = False
    gradient_guard_strategies: str = field(
        default=",".join(GUARD_STRATEGIES),
        metadata={"help": "Comma-separated subset of " + ", ".join(GUARD_STRATEGIES)},
    )
    gradient_guard_vanishing_threshold: float = field(
        default=1e-3, metadata={"help": "Mean |g| below this: add noise and boost the learning rate."}
    )
    gradient_guard_noise_std: float = 5e-3
    gradient_guard_small_grad_threshold: float = field(
        default=1e-4, metadata={"help": "Gradient elements with |g| below this are scaled."}
    )
    gradient_guard_small_grad_scale: float = 1.5
    gradient_guard_lr_boost: float = 1.2
    gradient_guard_clip_threshold: float = field(
        default=5.0, metadata={"help": "Mean |g| above this: rescale gradients so mean |g| equals it."}
    )
    gradient_guard_seed: int | None = field(default=None, metadata={"help": "Noise seed (default: seed)."})

    def guard_strategies(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.gradient_guard_strategies.split(",") if s.strip())

    @property
    def guard_enabled(self) -> bool:
        return self.gradient_guard or self.debug


@dataclass
class ExportArguments:
    """`ulysses-pro export`: where and how the merged model is written (LLaMA-Factory's keys)."""

    export_dir: str | None = None
    export_size: float = field(default=5, metadata={"help": "Largest shard, in GB."})
    export_device: str = field(default="cpu", metadata={"help": "cpu | auto (the GPU when there is one)."})
    export_legacy_format: bool = field(
        default=False, metadata={"help": "pytorch_model.bin instead of safetensors."}
    )


@dataclass
class GeneratingArguments:
    """Decoding for `ulysses-pro chat` and the RL stages' rollouts (LLaMA-Factory's keys and
    defaults; `min_new_tokens` and `stop` are ours)."""

    do_sample: bool = True
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50
    num_beams: int = 1
    max_length: int = 1024
    max_new_tokens: int = 1024
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    skip_special_tokens: bool = True
    min_new_tokens: int = field(default=0, metadata={"help": "No stop token or string ends one earlier."})
    stop: list[str] | None = field(
        default=None,
        metadata={"help": "RL rollouts: strings that end a completion (after the token that completes one)."},
    )

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate` (a set `max_new_tokens` wins over `max_length`)."""
        kwargs = {
            "do_sample": self.do_sample,
            "num_beams": self.num_beams,
            "repetition_penalty": self.repetition_penalty,
            "length_penalty": self.length_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.min_new_tokens > 0:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.max_new_tokens > 0:
            kwargs["max_new_tokens"] = self.max_new_tokens
        else:
            kwargs["max_length"] = self.max_length
        return kwargs


ARGUMENT_GROUPS = (
    ModelArguments,
    DataArguments,
    FinetuningArguments,
    ParallelArguments,
    ProArguments,
    MemoryArguments,
    ExportArguments,
    GeneratingArguments,
)

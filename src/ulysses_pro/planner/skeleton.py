"""A training-ready model skeleton on the meta device: the config's decoder with no weights at all.

Built from the model's `config.json` (or a `tiny:` spec), with the run's fine-tuning setup and
memory stack and attention: under SP the real SP path (planner/simulate.py simulates its
collectives and kernels), at SP=1 a stand-in with the allocations of transformers' SDPA. A step on
it costs no FLOPs and no memory, yet every allocation has its real shape, dtype and lifetime.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..models.kv_cache import set_kv_cache
from ..models.loader import load_model_config

ATTENTION_NAME = "ulysses_pro_plan"


@dataclass(frozen=True)
class Layout:
    """The SP split the plan is for (size 1: no SP, transformers' own SDPA)."""

    ulysses: int = 1
    ring: int = 1

    @property
    def size(self) -> int:
        return self.ulysses * self.ring

    @property
    def split_unit(self) -> int:
        return self.ulysses * (2 * self.ring if self.ring > 1 else 1)


def _empty(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


class _PlannedAttention(torch.autograd.Function):
    """Allocations of transformers' SDPA (SP=1): it keeps q, k, v, its output and log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, layout: Layout, acc_dtype):
        b, heads, local, dim = q.shape
        ctx.save_for_backward(
            q, k, v, _empty((b, heads, local, dim), q), _empty((b, heads, local), q, torch.float32)
        )
        ctx.shapes = (q.shape, k.shape)
        return _empty((b, heads, local, dim), q)

    @staticmethod
    def backward(ctx, grad_out):
        q_shape, k_shape = ctx.shapes
        like = ctx.saved_tensors[0]
        return _empty(q_shape, like), _empty(k_shape, like), _empty(k_shape, like), None, None


def planned_attention(layout: Layout, acc_dtype: torch.dtype):
    """A transformers attention function with the allocations of SP attention at `layout`."""

    def attention(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
    ):
        out = _PlannedAttention.apply(query, key, value, layout, acc_dtype)
        return out.transpose(1, 2), None

    return attention


def decoder_depth(config) -> int:
    return config.get_text_config().num_hidden_layers


def with_depth(config, layers: int):
    """A copy of `config` whose decoder keeps its first `layers` layers (per-layer lists cut too)."""
    config = copy.deepcopy(config)
    text = config.get_text_config()
    text.num_hidden_layers = layers
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[:layers]
    return config


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    from ..models.wrappers import unwrap_model

    return [m for m in unwrap_model(model).modules() if type(m).__name__.endswith("DecoderLayer")]


@contextlib.contextmanager
def _without_zero3_construction():
    """A ZeRO-3 config read in this process makes transformers partition and initialise every model
    it builds (`zero.Init`), which a meta-device skeleton cannot take; the planner accounts for the
    sharding itself (planner/estimate.py)."""
    from transformers.integrations import deepspeed

    saved = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = saved


def build_skeleton(model_args, finetuning_args, training_args, config=None) -> nn.Module:
    """The model of the run on the meta device, trainable as the run would set it up (no weights)."""
    from transformers import AutoModelForCausalLM

    from ..models.loader import _apply_finetuning, compute_dtype_for

    config = load_model_config(model_args) if config is None else config
    dtype = compute_dtype_for(training_args, finetuning_args)
    with torch.device("meta"), _without_zero3_construction():
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=model_args.trust_remote_code
        )
        set_kv_cache(model, False)
        model = _apply_finetuning(model, model_args, finetuning_args, is_trainable=True)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32 and not finetuning_args.pure_bf16:
            param.data = param.data.float()  # the loader's fp32 upcast of trainable weights
    return model


def wire_planned_attention(model: nn.Module, layout: Layout, acc_dtype: torch.dtype) -> None:
    """SP=1: transformers' SDPA (stand-in allocations). SP>1: the real SP path, which the trace runs
    under `planner.simulate.simulated_sequence_parallel`."""
    from transformers import AttentionInterface

    from ..models.attention import apply_sequence_parallel
    from ..models.wrappers import unwrap_model
    from .simulate import layout_for

    if layout.size > 1:
        apply_sequence_parallel(model, layout_for(layout.ulysses, layout.ring))
        return
    AttentionInterface.register(ATTENTION_NAME, planned_attention(layout, acc_dtype))
    unwrap_model(model).set_attn_implementation(ATTENTION_NAME)

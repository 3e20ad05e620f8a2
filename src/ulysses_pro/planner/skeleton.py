"""A training-ready model skeleton on the meta device: the config's decoder with no weights at all.

Built from the model's `config.json` (or a `tiny:` spec), with the run's fine-tuning setup and
memory stack, and a stand-in for sequence-parallel attention that allocates exactly the tensors
this rank's attention would (the gathered head shard of the ring-local sequence, GQA replication,
the ring's fp32 accumulators and in-flight blocks, the all-to-all buffers) without computing. A
step on it costs no FLOPs and no memory, yet every allocation has its real shape and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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
    """Allocations of one layer's SP attention (hybrid.py + ring.py + comm.py), no arithmetic."""

    @staticmethod
    def forward(ctx, q, k, v, layout: Layout, acc_dtype):
        b, heads, local, dim = q.shape
        kv_heads = max(k.shape[1], layout.ulysses)  # replicated when fewer than the ulysses degree
        full = local * layout.ulysses
        if layout.size == 1:  # transformers' SDPA: keeps q, k, v and its output and log-sum-exp
            ctx.save_for_backward(
                q, k, v, _empty((b, heads, local, dim), q), _empty((b, heads, local), q, torch.float32)
            )
            ctx.layout, ctx.acc, ctx.shapes = layout, acc_dtype, (q.shape, k.shape)
            return _empty((b, heads, local, dim), q)
        transient = [_empty(t.shape, t) for t in (q, k, v) for _ in range(2)]  # all-to-all send / receive
        gathered = [
            _empty((b, full, heads // layout.ulysses, dim), q),
            _empty((b, full, kv_heads // layout.ulysses, dim), q),
            _empty((b, full, kv_heads // layout.ulysses, dim), q),
        ]
        if layout.ring > 1:  # fp32 merge buffers and the next key/value block in flight
            transient += [_empty((b, heads // layout.ulysses, full, dim), q, acc_dtype)]
            transient += [_empty(t.shape, t) for t in gathered[1:] for _ in range(2)]
        out = _empty((b, heads // layout.ulysses, full, dim), q)
        lse = _empty((b, heads // layout.ulysses, full), q, torch.float32)
        transient += [_empty(out.shape, out) for _ in range(2)]  # the return all-to-all
        del transient
        ctx.save_for_backward(*gathered, out, lse)
        ctx.layout, ctx.acc, ctx.shapes = layout, acc_dtype, (q.shape, k.shape)
        return _empty((b, heads, local, dim), q)

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        q_shape, k_shape = ctx.shapes
        layout = ctx.layout
        like = saved[0]
        if layout.size == 1:
            return _empty(q_shape, like), _empty(k_shape, like), _empty(k_shape, like), None, None
        gathered_grad = _empty(saved[3].shape, grad_out)  # grad of the output, gathered
        buffers = [_empty(gathered_grad.shape, gathered_grad) for _ in range(2)]
        grads = [_empty(t.shape, t, ctx.acc) for t in saved[:3]]
        if layout.ring > 1:  # per-step key/value gradients and accumulators travelling the ring
            buffers += [_empty(t.shape, t, ctx.acc) for t in saved[1:3] for _ in range(3)]
            buffers += [_empty(t.shape, t) for t in saved[1:3] for _ in range(2)]
        del buffers, gathered_grad, grads
        return _empty(q_shape, like), _empty(k_shape, like), _empty(k_shape, like), None, None


def planned_attention(layout: Layout, acc_dtype: torch.dtype):
    """A transformers attention function with the allocations of SP attention at `layout`."""

    def attention(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
    ):
        out = _PlannedAttention.apply(query, key, value, layout, acc_dtype)
        return out.transpose(1, 2), None

    return attention


def build_skeleton(model_args, finetuning_args, training_args) -> nn.Module:
    """The model of the run on the meta device, trainable as the run would set it up (no weights)."""
    from transformers import AutoModelForCausalLM

    from ..models.loader import TINY_PREFIX, _apply_finetuning, _compute_dtype, parse_tiny_spec

    path = model_args.model_name_or_path
    if path.startswith(TINY_PREFIX):
        from ..models.tiny import build_tiny_config
        from ..models.tokenizer import load_builtin_tokenizer

        arch, sizes = parse_tiny_spec(path)
        sizes.setdefault("vocab_size", len(load_builtin_tokenizer()))
        config = build_tiny_config(arch, **sizes)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            path, trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision
        )
    dtype = _compute_dtype(training_args)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=model_args.trust_remote_code
        )
        model.config.use_cache = False
        model = _apply_finetuning(model, model_args, finetuning_args, is_trainable=True)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()  # the loader's fp32 upcast of trainable weights
    return model


def wire_planned_attention(model: nn.Module, layout: Layout, acc_dtype: torch.dtype) -> None:
    from transformers import AttentionInterface

    from ..models.wrappers import unwrap_model

    AttentionInterface.register(ATTENTION_NAME, planned_attention(layout, acc_dtype))
    unwrap_model(model).set_attn_implementation(ATTENTION_NAME)

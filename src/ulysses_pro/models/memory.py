"""Memory-tiled language-model head: per-token losses without full-vocabulary logits.

While `token_loss_head` is active, the model's output projection returns per-token cross-entropy
(shape `batch x seq`) instead of logits. The projection runs in chunks of the *flattened* tokens
(batch x seq together) under activation checkpointing, so at most one `chunk x vocab` fp32 logits
slab exists at a time, in forward and in backward, whatever the batch size. The chunk is sized
from a logits budget, so a 152k vocabulary gets shorter chunks than a 32k one. The head still runs
inside the module's own forward call, so DDP, FSDP and DeepSpeed hooks see a normal forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..parallel.reduce import IGNORE_INDEX
from .wrappers import unwrap_model

# fp32 logits elements per chunk (128 MiB): 1,024 tokens at a 32k vocabulary, 215 at 152k.
LOGITS_BUDGET = 1 << 25


@dataclass(frozen=True)
class LossHead:
    """How the loss head computes per-token losses: chunk size, or a fused kernel.

    `fused(hidden (n, d), weight, targets (n,), bias, softcap, reduction) -> (n,) or ()` losses
    replaces the chunked projection when given (liger-kernel's fused linear cross-entropy, see
    models/liger.py).
    """

    chunk_tokens: int | None = None
    fused: Callable | None = None


def default_chunk_tokens(vocab_size: int) -> int:
    """Tokens per loss chunk so that one chunk of fp32 logits stays within `LOGITS_BUDGET`."""
    return max(16, LOGITS_BUDGET // max(1, vocab_size))


def _capped_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    temperature: float = 1.0,
):
    """One chunk's fp32 logits: soft-capped (Gemma 2), then divided by the sampling temperature
    (the order generation applies them: the model's logits, then the temperature warper)."""
    logits = F.linear(hidden, weight, bias).float()
    logits = torch.tanh(logits / softcap) * softcap if softcap else logits
    return logits / temperature if temperature != 1.0 else logits


def _flat_chunks(
    hidden: torch.Tensor, targets: torch.Tensor, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(hidden, targets) pieces of `chunk` tokens over the flattened batch x seq."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    for start in range(0, flat_targets.shape[0], chunk):
        yield flat_hidden[start : start + chunk], flat_targets[start : start + chunk]


def _chunk_token_losses(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
    temperature: float = 1.0,
) -> torch.Tensor:
    logits = _capped_logits(hidden, weight, bias, softcap, temperature)
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses.view(targets.shape)


def tiled_token_losses(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_tokens: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token cross-entropy (0 where target is IGNORE_INDEX) of the logits over `temperature`,
    computed chunk by chunk over the flattened (batch x seq) tokens; returns `targets.shape`."""
    chunk = chunk_tokens or default_chunk_tokens(head.weight.shape[0])
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    pieces = []
    for start in range(0, flat_targets.shape[0], chunk):
        stop = start + chunk
        args = (
            flat_hidden[start:stop],
            head.weight,
            head.bias,
            flat_targets[start:stop],
            softcap,
            temperature,
        )
        if torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad):
            pieces.append(checkpoint(_chunk_token_losses, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_token_losses(*args))
    return torch.cat(pieces).view(targets.shape)


class _SummedLossWithGradients(torch.autograd.Function):
    """Sum of token losses whose gradients are computed chunk by chunk *in forward*.

    A summed loss has one upstream gradient for every token, so d(sum)/d(hidden) and d(sum)/d(weight)
    can be computed while each chunk's logits exist, then scaled in backward: the logits are
    projected twice (forward, and the gradient with respect to the weight and the hidden states
    from the same logits) instead of three times as with recomputation. d(hidden) is one
    `tokens x hidden` tensor, which takes the place of the hidden states the recomputation keeps.

    The weight's gradient is summed over chunks in fp32 and cast to the weight's dtype once, in
    backward: with bf16 weights (pure_bf16, FSDP2's bf16 compute copy) hundreds of chunk gradients
    summed in bf16 would lose their low bits (2^-8 relative per addition). It is a `vocab x hidden`
    fp32 buffer from this forward to its backward, which follows at once (the summed head ends the
    forward: SFT and pre-training); under FSDP2 / ZeRO-3 the unsharded gradient the engine would
    reduce-scatter has the same size.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, chunk):
        flat_hidden = hidden.detach().reshape(-1, hidden.shape[-1])
        flat_targets = targets.reshape(-1)
        wants = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        grad_hidden = torch.empty_like(flat_hidden) if wants[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if wants[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if wants[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        weight_leaf = weight.detach().requires_grad_(wants[1])
        bias_leaf = bias.detach().requires_grad_(wants[2]) if bias is not None else None
        for start in range(0, flat_targets.shape[0], chunk):
            piece = flat_hidden[start : start + chunk].requires_grad_(wants[0])
            with torch.enable_grad():
                loss = _chunk_token_losses(
                    piece, weight_leaf, bias_leaf, flat_targets[start : start + chunk], softcap
                )
                loss = loss.sum()
                leaves = [leaf for leaf, wanted in zip((piece, weight_leaf, bias_leaf), wants) if wanted]
                grads = iter(torch.autograd.grad(loss, leaves) if leaves else ())
            total += loss.detach()
            if wants[0]:
                grad_hidden[start : start + chunk] = next(grads)
            if wants[1]:
                grad_weight += next(grads)
            if wants[2]:
                grad_bias += next(grads)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.wants, ctx.hidden_shape = wants, hidden.shape
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        saved = iter(ctx.saved_tensors)
        grad_hidden = next(saved).view(ctx.hidden_shape) * grad_total if ctx.wants[0] else None
        grad_weight = (next(saved) * grad_total).to(ctx.dtypes[0]) if ctx.wants[1] else None
        grad_bias = (next(saved) * grad_total).to(ctx.dtypes[1]) if ctx.wants[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def tiled_loss_sum(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Sum of the token cross-entropies (IGNORE_INDEX targets add 0), chunked over flattened tokens."""
    chunk = chunk_tokens or default_chunk_tokens(head.weight.shape[0])
    if not torch.is_grad_enabled() or not (hidden.requires_grad or head.weight.requires_grad):
        return tiled_token_losses(hidden, head, targets, softcap=softcap, chunk_tokens=chunk).sum()
    return _SummedLossWithGradients.apply(hidden, head.weight, head.bias, targets, softcap, chunk)


@torch.no_grad()
def tiled_token_hits(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """How many targets (not IGNORE_INDEX) are the argmax of their logits, chunk by chunk (the full
    logits never exist). A soft-cap is monotonic, so it does not change the argmax."""
    chunk = chunk_tokens or default_chunk_tokens(head.weight.shape[0])
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    hits = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, flat_targets.shape[0], chunk):
        logits = F.linear(flat_hidden[start : start + chunk].to(head.weight.dtype), head.weight, head.bias)
        piece = flat_targets[start : start + chunk]
        hits += ((logits.argmax(-1) == piece) & (piece != IGNORE_INDEX)).sum()
    return hits


@torch.no_grad()
def tiled_token_entropy(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_tokens: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Entropy of the next-token distribution (logits over `temperature`) at every target position
    (0 elsewhere), one `chunk x vocab` slab of logits at a time (a metric: no gradient)."""
    pieces = []
    for piece, piece_targets in _flat_chunks(
        hidden, targets, chunk_tokens or default_chunk_tokens(head.weight.shape[0])
    ):
        log_probs = torch.log_softmax(
            _capped_logits(piece.to(head.weight.dtype), head.weight, head.bias, softcap, temperature), -1
        )
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        pieces.append(entropy * piece_targets.ne(IGNORE_INDEX))
    return torch.cat(pieces).view(targets.shape)


def _active_head(head: nn.Module) -> nn.Linear:
    """The Linear that computes logits: the head itself, or, when LoRA trains it in full
    (`modules_to_save`: additional_target, a resized vocabulary), the copy of the active adapter,
    or the original while adapters are disabled."""
    copies = getattr(head, "modules_to_save", None)
    if copies is not None and hasattr(head, "original_module"):
        active = head.active_adapters if not head.disable_adapters else []
        head = copies[active[0]] if active and active[0] in copies else head.original_module
    if not isinstance(head, nn.Linear):
        raise TypeError(f"tiled loss needs a Linear output head, found {type(head).__name__}")
    return head


@contextlib.contextmanager
def token_loss_head(
    model: nn.Module,
    targets: torch.Tensor,
    chunk_tokens: int | None = None,
    head_options: LossHead | None = None,
    *,
    reduction: str = "none",
    hits: list | None = None,
    entropies: list | None = None,
    temperature: float = 1.0,
) -> Iterator[None]:
    """Within the block, `model(...).logits` holds per-token losses for `targets` (already shifted),
    or with `reduction="sum"` their sum (gradients then computed in forward, see above). `hits`: a
    list that receives each forward's count of targets that are their logits' argmax (accuracy);
    `entropies`: one that receives each forward's per-token entropies (RL stages' logs).
    `temperature`: the losses (and entropies) are those of the logits divided by it, chunk by chunk
    (the RL stages' log-probs at the sampling distribution, as TRL and verl compute them)."""
    if reduction not in ("none", "sum"):
        raise ValueError(f"reduction must be 'none' or 'sum', got {reduction!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if temperature != 1.0 and reduction != "none":
        raise ValueError("a temperature applies to per-token log-probs (reduction='none'), not a summed loss")
    options = head_options or LossHead(chunk_tokens=chunk_tokens)
    hf_model = unwrap_model(model)
    wrapper = hf_model.get_output_embeddings()
    _active_head(wrapper)  # fails now, not inside the forward, on a head that is not a Linear
    config = hf_model.config
    # Gemma 2 soft-caps logits after the head; apply the cap inside the tiles instead.
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        head = _active_head(wrapper)  # per call: a reference forward disables the adapters
        if hidden.shape[:2] != targets.shape:
            raise ValueError(
                f"hidden states {tuple(hidden.shape[:2])} do not match targets {tuple(targets.shape)}"
            )
        if hits is not None:
            hits.append(tiled_token_hits(hidden, head, targets, options.chunk_tokens))
        if entropies is not None:
            entropies.append(
                tiled_token_entropy(
                    hidden,
                    head,
                    targets,
                    softcap=softcap,
                    chunk_tokens=options.chunk_tokens,
                    temperature=temperature,
                )
            )
        # A soft-cap sits between the projection and the temperature: the fused kernel cannot take
        # both, so that case runs the chunked projection.
        if options.fused is not None and (temperature == 1.0 or not softcap):
            flat = hidden.reshape(-1, hidden.shape[-1])
            weight, bias = head.weight, head.bias
            if temperature != 1.0:  # (W h + b) / T = W (h / T) + b / T: the kernel never sees T
                flat = flat / temperature
                bias = bias / temperature if bias is not None else None
            losses = options.fused(flat, weight, targets.reshape(-1), bias, softcap, reduction)
            return losses if reduction == "sum" else losses.view(targets.shape)
        if reduction == "sum":
            return tiled_loss_sum(hidden, head, targets, softcap=softcap, chunk_tokens=options.chunk_tokens)
        return tiled_token_losses(
            hidden, head, targets, softcap=softcap, chunk_tokens=options.chunk_tokens, temperature=temperature
        )

    wrapper.forward = forward
    if softcap:
        _set_unchecked(text_config, "final_logit_softcapping", None)
    try:
        yield
    finally:
        del wrapper.forward  # back to the class's forward
        if softcap:
            _set_unchecked(text_config, "final_logit_softcapping", softcap)


def _set_unchecked(config, key: str, value) -> None:
    """Set a config field for the duration of a step, also where the config class validates its
    fields (Gemma 3n's strict config refuses None for the soft-cap it keeps as a float)."""
    try:
        setattr(config, key, value)
    except Exception:  # noqa: BLE001  (huggingface_hub's StrictDataclassFieldValidationError)
        config.__dict__[key] = value

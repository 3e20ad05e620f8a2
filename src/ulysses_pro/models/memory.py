"""Memory-tiled language-model head: per-token losses without full-vocabulary logits.

While `token_loss_head` is active, the model's output projection returns per-token cross-entropy
(shape `batch x seq`) instead of logits. The projection runs in sequence chunks under activation
checkpointing, so at most one chunk of `chunk x vocab` fp32 logits exists at a time, in forward and
in backward. The head still runs inside the module's own forward call, so DDP, FSDP and DeepSpeed
hooks see a normal forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..parallel.reduce import IGNORE_INDEX
from .wrappers import unwrap_model

DEFAULT_CHUNK_TOKENS = 1024


def _chunk_token_losses(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
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
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """Per-token cross-entropy (0 where target is IGNORE_INDEX), computed chunk by chunk."""
    pieces = []
    for start in range(0, hidden.shape[1], chunk_tokens):
        stop = start + chunk_tokens
        args = (hidden[:, start:stop], head.weight, head.bias, targets[:, start:stop], softcap)
        if torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad):
            pieces.append(checkpoint(_chunk_token_losses, *args, use_reentrant=False))
        else:
            pieces.append(_chunk_token_losses(*args))
    return torch.cat(pieces, dim=1)


@contextlib.contextmanager
def token_loss_head(
    model: nn.Module, targets: torch.Tensor, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> Iterator[None]:
    """Within the block, `model(...).logits` holds per-token losses for `targets` (already shifted)."""
    hf_model = unwrap_model(model)
    head = hf_model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"tiled loss needs a Linear output head, found {type(head).__name__}")
    config = hf_model.config
    # Gemma 2 soft-caps logits after the head; apply the cap inside the tiles instead.
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[:2] != targets.shape:
            raise ValueError(
                f"hidden states {tuple(hidden.shape[:2])} do not match targets {tuple(targets.shape)}"
            )
        return tiled_token_losses(hidden, head, targets, softcap=softcap, chunk_tokens=chunk_tokens)

    head.forward = forward
    if softcap:
        text_config.final_logit_softcapping = None
    try:
        yield
    finally:
        del head.forward  # back to the class's forward
        if softcap:
            text_config.final_logit_softcapping = softcap

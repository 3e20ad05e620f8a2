"""The scalar value head of a reward model: one Linear(hidden, 1) on the decoder's last hidden states.

The head is registered on the Hugging Face model as `v_head`, so the optimizer, DDP and
`save_pretrained` see it; it is also written on its own to `value_head.safetensors` (LLaMA-Factory's
file and key names), because a LoRA checkpoint holds adapter weights only. While `value_head_output`
is active the model's output projection returns one score per token instead of logits, so the
full-vocabulary projection is never computed and every engine hook still sees a normal forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .wrappers import unwrap_model

VALUE_HEAD_FILE = "value_head.safetensors"
_WEIGHT, _BIAS = "v_head.summary.weight", "v_head.summary.bias"


def attach_value_head(model: nn.Module, seed: int, freeze_lm_head: bool = True) -> nn.Linear:
    """Create the value head (seeded: every rank and every run starts from the same head).
    `freeze_lm_head`: a reward model's vocabulary projection stops training; a PPO critic's policy
    keeps its own."""
    hf_model = unwrap_model(model)
    config = (
        hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") else hf_model.config
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(config.hidden_size, 1)
        nn.init.normal_(head.weight, std=1.0 / (config.hidden_size + 1) ** 0.5)
        nn.init.zeros_(head.bias)
    device = next(hf_model.parameters()).device
    hf_model.v_head = head.to(device)
    # The vocabulary projection plays no part in a reward model; an untied one would get no gradient
    # (and DDP would wait for it), so it stops training. A tied one is the input embedding: keep it.
    lm_head = hf_model.get_output_embeddings()
    untied = lm_head is not None and lm_head.weight is not hf_model.get_input_embeddings().weight
    if freeze_lm_head and untied:
        lm_head.requires_grad_(False)
    return hf_model.v_head


@contextlib.contextmanager
def value_head_output(model: nn.Module) -> Iterator[None]:
    """Within the block, `model(...).logits` holds one scalar score per token (batch x seq)."""
    hf_model = unwrap_model(model)
    head, value_head = hf_model.get_output_embeddings(), hf_model.v_head

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return value_head(hidden.to(value_head.weight.dtype)).squeeze(-1)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


@contextlib.contextmanager
def values_alongside(model: nn.Module) -> Iterator[None]:
    """Within the block (inside `token_loss_head`), `model(...).logits` is (batch x seq x 2): the
    output head's per-token value at [..., 0] and the value head's score at [..., 1], both from the
    same last hidden states (one forward for the policy's log-probs and the critic's values)."""
    hf_model = unwrap_model(model)
    head, value_head = hf_model.get_output_embeddings(), hf_model.v_head
    inner = head.forward

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        first = inner(hidden)
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1)
        return torch.stack([first, values.to(first.dtype)], dim=-1)

    head.forward = forward
    try:
        yield
    finally:
        head.forward = inner


def _whole_parameters(head: nn.Module, modifier_rank: int | None = None):
    """Under ZeRO-3 each rank holds a partition of the head: gather it (a collective: every rank
    enters). Elsewhere a no-op."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(head.parameters()), modifier_rank=modifier_rank)


def value_head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's weights in LLaMA-Factory's key names, on the host (call on every rank)."""
    head = unwrap_model(model).v_head
    with _whole_parameters(head):
        return {_WEIGHT: _on_host(head.weight), _BIAS: _on_host(head.bias)}


def _on_host(param: torch.Tensor) -> torch.Tensor:
    """A whole copy on the host: FSDP2's shards (DTensors) are gathered first (every rank enters)."""
    whole = param.full_tensor() if hasattr(param, "full_tensor") else param
    return whole.detach().cpu().clone()


def save_value_head(model: nn.Module, output_dir: str | Path, state: dict | None = None) -> Path:
    """Write the value head (or its already gathered `state`) to `output_dir/value_head.safetensors`."""
    from safetensors.torch import save_file

    path = Path(output_dir) / VALUE_HEAD_FILE
    save_file(state if state is not None else value_head_state(model), path)
    return path


def load_value_head(model: nn.Module, folder: str | Path) -> bool:
    """Load `folder/value_head.safetensors` into the model's value head if the file exists (call on
    every rank)."""
    from safetensors.torch import load_file

    path = Path(folder) / VALUE_HEAD_FILE
    if not path.is_file():
        return False
    state = load_file(path)
    head = unwrap_model(model).v_head
    with _whole_parameters(head, modifier_rank=0), torch.no_grad():
        for param, value in ((head.weight, state[_WEIGHT]), (head.bias, state[_BIAS])):
            if hasattr(param, "device_mesh"):  # FSDP2: this rank's shard of the saved head
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
            param.copy_(value)
    return True

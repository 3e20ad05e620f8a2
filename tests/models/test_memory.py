"""The tiled loss head equals plain cross-entropy on full logits, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ulysses_pro.models.memory import tiled_token_losses, token_loss_head
from ulysses_pro.models.tiny import build_tiny_model


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_tiled_losses_match_full_logits(softcap, chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 7))
    targets[0, :3] = -100
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = F.cross_entropy(
        logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-100, reduction="none"
    )
    (expected.sum()).backward()
    grad_hidden, grad_weight = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = None
    head.weight.grad = None
    tiled = tiled_token_losses(hidden, head, targets, softcap=softcap, chunk_tokens=chunk)
    tiled.sum().backward()
    torch.testing.assert_close(tiled.reshape(-1), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, grad_hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, grad_weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3n_text"])  # Gemma 3n: a strict config
def test_model_level_loss_matches_hf_logits(tokenizer, arch):
    model = build_tiny_model(arch, tokenizer, seed=1)
    ids = torch.randint(3, len(tokenizer), (2, 12))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    logits = model(input_ids=ids, use_cache=False).logits  # includes Gemma-2's logit soft-capping
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    with token_loss_head(model, targets, chunk_tokens=5):
        tiled = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(tiled.sum(), expected, rtol=1e-5, atol=1e-5)
    # The head and the soft-cap are restored afterwards: logits again.
    assert model(input_ids=ids, use_cache=False).logits.shape[-1] == len(tokenizer)
    text_config = model.config.get_text_config()
    assert getattr(text_config, "final_logit_softcapping", None) == getattr(
        type(text_config)(), "final_logit_softcapping", None
    )


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("frozen_head", [False, True])
def test_summed_loss_makes_exact_gradients_in_forward(softcap, frozen_head):
    """The summed head computes d/dhidden and d/dweight chunk by chunk in forward and scales them in
    backward: equal to autograd through full logits, for any upstream scale."""
    from ulysses_pro.models.memory import tiled_loss_sum

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    head.requires_grad_(not frozen_head)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    targets[1, :4] = -100
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = F.cross_entropy(
        logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    (expected * 3.7).backward()
    want = [hidden.grad.clone()] + ([] if frozen_head else [head.weight.grad.clone(), head.bias.grad.clone()])
    hidden.grad = head.weight.grad = head.bias.grad = None
    total = tiled_loss_sum(hidden, head, targets, softcap=softcap, chunk_tokens=4)
    (total * 3.7).backward()
    got = [hidden.grad] + ([] if frozen_head else [head.weight.grad, head.bias.grad])
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert frozen_head == (head.weight.grad is None)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_tiled_entropies_equal_the_full_distributions_entropy(softcap):
    from ulysses_pro.models.memory import tiled_token_entropy
    from ulysses_pro.parallel.reduce import IGNORE_INDEX

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(2, 9, 16) * 3
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :3] = IGNORE_INDEX
    logits = head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = torch.distributions.Categorical(logits=logits).entropy() * targets.ne(IGNORE_INDEX)
    got = tiled_token_entropy(hidden, head, targets, softcap=softcap, chunk_tokens=4)
    assert torch.allclose(got, expected, atol=1e-5)
    assert got[0, :3].abs().max() == 0  # no target, no entropy


def test_summed_loss_adds_bf16_chunk_gradients_in_fp32():
    """A bf16 head (pure_bf16, FSDP2's compute copy) over 512 chunks: the weight gradient is within
    one bf16 rounding of the fp64 one (summed in bf16 it was 2.6e-2 off)."""
    from ulysses_pro.models.memory import tiled_loss_sum

    torch.manual_seed(0)
    vocab, width, tokens = 64, 32, 8192
    head = torch.nn.Linear(width, vocab, bias=False).to(torch.bfloat16)
    hidden = torch.randn(1, tokens, width, dtype=torch.bfloat16)
    targets = torch.randint(0, vocab, (1, tokens))
    tiled_loss_sum(hidden, head, targets, chunk_tokens=16).backward()
    assert head.weight.grad.dtype == torch.bfloat16
    weight = head.weight.detach().double().requires_grad_()
    logits = hidden.double().reshape(-1, width) @ weight.T
    F.cross_entropy(logits, targets.reshape(-1), reduction="sum").backward()
    error = float((head.weight.grad.double() - weight.grad).norm() / weight.grad.norm())
    assert error < 5e-3, error

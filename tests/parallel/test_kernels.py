"""Block kernels: the fused CPU path equals the math path for every mask kind, forward and backward."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.parallel import kernels
from ulysses_pro.parallel.kernels import CAUSAL, FULL, BlockMask, block_backward, block_forward


def _textbook(q, k, v, allowed, scale):
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return probs @ v, lse


def _inputs(rows, keys, dtype=torch.float64):
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(2, 3, n, 8, generator=generator, dtype=dtype) for n in (rows, keys, keys, rows)]


def _custom(rows, keys):
    generator = torch.Generator().manual_seed(4)
    allowed = torch.rand(2, 1, rows, keys, generator=generator) < 0.5
    allowed[0, 0, 1] = False  # a query that sees nothing in this block
    return allowed, BlockMask("custom", lambda r: allowed[:, :, r])


@pytest.mark.parametrize("kind", ["full", "causal", "custom"])
@pytest.mark.parametrize("backend", ["cpu", "math"])
def test_block_kernels_match_textbook_attention(kind, backend, monkeypatch):
    monkeypatch.setattr(kernels, "QUERY_TILE", 4)
    monkeypatch.setattr(kernels, "_backend", lambda q, mask: backend)
    rows = keys = 11
    q, k, v, grad = _inputs(rows, keys)
    if kind == "custom":
        allowed, mask = _custom(rows, keys)
    else:
        allowed = torch.ones(rows, keys, dtype=torch.bool)
        allowed = allowed.tril() if kind == "causal" else allowed
        mask = CAUSAL if kind == "causal" else FULL
    out, lse = block_forward(q, k, v, 0.3, mask)
    want_out, want_lse = _textbook(q, k, v, allowed, 0.3)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)

    # In a ring a row that sees nothing in this block still has a finite final lse (its keys live
    # in other blocks): such a row must get dq = 0 here and add nothing to dk, dv.
    blind = ~allowed.any(-1, keepdim=True).expand(2, 3, rows, 1)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    seen_out, _ = _textbook(*leaves, allowed | blind, 0.3)
    (seen_out * grad.masked_fill(blind, 0.0)).sum().backward()
    grads = block_backward(grad, q, k, v, out, lse.masked_fill(blind[..., 0], 0.7), 0.3, mask)
    for got, leaf in zip(grads, leaves):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-10)


def test_fully_masked_rows_report_minus_infinity_lse():
    """The merge relies on lse = -inf for rows with no visible key (the CPU kernel itself says 0)."""
    q, k, v, _ = _inputs(6, 5)
    allowed, mask = _custom(6, 5)
    _, lse = block_forward(q, k, v, 0.3, mask)
    assert torch.isneginf(lse[0, :, 1]).all()
    assert torch.isfinite(lse[allowed.any(-1).expand_as(lse)]).all()


def test_half_precision_blocks_accumulate_in_fp32():
    q, k, v, _ = _inputs(8, 8, dtype=torch.bfloat16)
    out, lse = block_forward(q, k, v, 0.3, CAUSAL)
    assert out.dtype == lse.dtype == torch.float32
    want, _ = _textbook(q.double(), k.double(), v.double(), torch.ones(8, 8, dtype=torch.bool).tril(), 0.3)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=2e-2)

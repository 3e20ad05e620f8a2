"""Decoding attention over a KV cache in parts: each part's (output, log-sum-exp) merges into the
attention over all keys, locally and across ranks; a cache shared by several rows is read once."""

from __future__ import annotations

import torch

from ulysses_pro.parallel.decode import merge_over_group, merge_partials, partial_attention

from ..launcher import run_ranks


def _reference(query, key, value, scale, valid=None):
    """Plain softmax attention with the kv heads repeated, in float64."""
    group = query.shape[1] // key.shape[1]
    key = key.double().repeat_interleave(group, dim=1).expand(query.shape[0], -1, -1, -1)
    value = value.double().repeat_interleave(group, dim=1).expand(query.shape[0], -1, -1, -1)
    scores = query.double() @ key.transpose(-1, -2) * scale
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


def _inputs(seed=0, rows=3, shared=False, length=29):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(rows, 8, 1, 16, generator=generator)
    key = torch.randn(1 if shared else rows, 2, length, 16, generator=generator)
    value = torch.randn(1 if shared else rows, 2, length, 12, generator=generator)  # narrower values (MLA)
    return query, key, value


def test_parts_merge_into_attention_over_all_keys_with_a_shared_prompt_cache_and_masked_keys():
    query, key, value = _inputs(shared=True)
    valid = torch.ones(1, key.shape[2], dtype=torch.bool)
    valid[:, -3:] = False  # padding after the prompt
    want = _reference(query, key, value, 0.25, valid)
    cuts = [0, 10, 11, key.shape[2]]
    parts = [
        partial_attention(query, key[:, :, a:b], value[:, :, a:b], 0.25, valid[:, a:b]) for a, b in zip(cuts, cuts[1:])
    ]
    parts.append(partial_attention(query, key[:, :, :0], value[:, :, :0], 0.25))  # an empty part
    out, _ = merge_partials(parts)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
    whole, lse = partial_attention(query, key, value, 0.25, valid)
    torch.testing.assert_close(whole.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(lse).all()


def _merge_on_rank(rank, world_size):
    query, key, value = _inputs(seed=1, rows=2, length=37)
    want = _reference(query, key, value, 0.3)
    # rank r holds keys r, r + P, r + 2P, ... (round robin, as decoded tokens are kept); rank 3 none
    mine = torch.arange(rank, 30, world_size - 1) if rank < world_size - 1 else torch.arange(0)
    if rank == 0:
        mine = torch.cat([mine, torch.arange(30, 37)])
    out, lse = partial_attention(query, key[:, :, mine], value[:, :, mine], 0.3)
    merged = merge_over_group(out, lse, None if world_size == 1 else torch.distributed.group.WORLD)
    return float((merged.double() - want).abs().max())


def test_parts_on_four_ranks_merge_across_the_group_one_rank_holding_none():
    errors = run_ranks(_merge_on_rank, 4)
    assert max(errors) < 1e-5, errors

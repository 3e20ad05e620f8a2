"""One decoding step's attention over a KV cache split across the SP group.

A long rollout's prompt is prefilled under SP, so each rank keeps the keys and values of its own
shard of the prompt, and the tokens decoded after it are kept round-robin (token t on SP rank
t mod P): no rank holds the whole sequence's cache. A decoding step's query (one token per row,
the same on every rank) attends to each rank's part of the cache on its own; the parts combine
exactly by their log-sum-exp, as blocks of flash attention's online softmax do (Dao et al. 2022;
the same merge splits the KV length of one decoding step in Flash-Decoding), here across ranks:
out = sum_r exp(lse_r - m) out_r / sum_r exp(lse_r - m), with m the largest lse_r.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def partial_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of `query` (b, H, q, d) over one part of the keys and values (kb, K, n, d):
    K divides H (grouped-query heads: kv head j serves heads j*H/K .. (j+1)*H/K - 1) and kb is b, or
    1 for a part every row shares (a prompt's cache under several completions, never copied per
    row). `valid` (kb, n) marks the keys to attend to. Returns the part's output (b, H, q, dv) and
    log-sum-exp (b, H, q) in fp32; a part with no valid key gives zeros and -inf."""
    rows, heads, length, _ = query.shape
    shared, kv_heads = key.shape[0], key.shape[1]
    group = heads // kv_heads
    grouped = query.reshape(rows, kv_heads, group, length, -1)
    folded = shared == 1 and rows > 1
    if folded:  # every row's queries side by side against the one cache
        grouped = grouped.permute(1, 0, 2, 3, 4).reshape(1, kv_heads, rows * group * length, -1)
    else:
        grouped = grouped.reshape(rows, kv_heads, group * length, -1)
    scores = torch.matmul(grouped.to(key.dtype), key.transpose(-1, -2)).float() * scale
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.nan_to_num(torch.exp(scores - lse.clamp(min=torch.finfo(torch.float32).min).unsqueeze(-1)))
    out = torch.matmul(weights.to(value.dtype), value).float()
    if folded:
        out = out.view(kv_heads, rows, group, length, -1).permute(1, 0, 2, 3, 4)
        lse = lse.view(kv_heads, rows, group, length).permute(1, 0, 2, 3)
    return out.reshape(rows, heads, length, -1), lse.reshape(rows, heads, length)


def merge_partials(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention over the union of the parts' keys, from each part's (output, lse)."""
    lses = torch.stack([lse for _, lse in parts])
    total = torch.logsumexp(lses, dim=0)
    finite = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    out = sum(o * torch.exp(lse - finite).unsqueeze(-1) for o, lse in parts)
    return out, total


def merge_over_group(out: torch.Tensor, lse: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The attention over every rank's part of the keys, from this rank's (output, lse): three
    all-reduces of a decoding step's small tensors (one token per row)."""
    if group is None or dist.get_world_size(group) == 1:
        return out
    peak = lse.clone()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weight = torch.exp(lse - peak)  # 0 where this rank held no key
    weighted = out * weight.unsqueeze(-1)
    dist.all_reduce(weighted, group=group)
    dist.all_reduce(weight, group=group)
    return weighted / weight.unsqueeze(-1)

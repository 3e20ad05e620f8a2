"""SP attention primitives on 2 and 4 gloo ranks against a single-process reference.

Outputs and input gradients (q, k, v) must match the full-sequence attention for every mode,
uneven tails (padding), GQA with 1 and 2 KV heads, and packed documents.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from ulysses_pro.parallel.hybrid import sequence_parallel_attention
from ulysses_pro.parallel.mesh import destroy_sequence_parallel, init_sequence_parallel
from ulysses_pro.parallel.sharding import padded_length, shard_indices

from ..device_context import factories_default_to
from ..launcher import run_ranks

HEADS, DIM = 4, 8


def naive_attention(q, k, v, position_ids, window=None, softcap=0.0, sinks=None):
    """Textbook softmax attention with a mask built token by token from the position ids; a
    `window` W hides keys W or more tokens back (transformers' sliding_window), `softcap` caps the
    scores as Gemma 2 does, `sinks` (H,) join each head's softmax as an extra logit (GPT-OSS's eager
    attention: concatenated to the scores, dropped after the softmax)."""
    batch, heads, length, _ = q.shape
    groups = heads // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    mask = torch.full((batch, 1, length, length), float("-inf"))
    for b in range(batch):
        document = 0
        docs = []
        for t in range(length):
            if t > 0 and position_ids[b, t] != position_ids[b, t - 1] + 1:
                document += 1
            docs.append(document)
        for i in range(length):
            for j in range(i + 1):
                if docs[i] == docs[j] and (window is None or i - j < window):
                    mask[b, 0, i, j] = 0.0
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores + mask
    if sinks is not None:
        sink_column = sinks.reshape(1, -1, 1, 1).expand(batch, -1, length, 1)
        return torch.softmax(torch.cat([scores, sink_column], dim=-1), dim=-1)[..., :-1] @ v
    return torch.softmax(scores, dim=-1) @ v


def make_inputs(length, kv_heads, packed, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(2, HEADS, length, DIM, generator=generator, dtype=torch.float64)
    k = torch.randn(2, kv_heads, length, DIM, generator=generator, dtype=torch.float64)
    v = torch.randn(2, kv_heads, length, DIM, generator=generator, dtype=torch.float64)
    weight = torch.randn(2, HEADS, length, DIM, generator=generator, dtype=torch.float64)
    positions = torch.arange(length).repeat(2, 1)
    if packed:
        # Row 0: three documents; row 1: two, with a boundary off any shard edge.
        positions[0] = torch.cat(
            [torch.arange(5), torch.arange(length // 2 - 5), torch.arange(length - length // 2)]
        )
        positions[1] = torch.cat([torch.arange(7), torch.arange(length - 7)])
    return q, k, v, weight, positions


def _check(
    rank,
    world,
    mode,
    kv_heads,
    packed,
    real_length,
    backend="native",
    factories_on=None,
    window=None,
    softcap=0.0,
    with_sinks=False,
):
    from ulysses_pro.parallel import kernels
    from ulysses_pro.parallel.kernels import reference as reference_kernels

    torch.set_default_dtype(torch.float64)
    reference_kernels.QUERY_TILE = 5  # several query tiles per call, uneven last tile
    if backend == "math":
        kernels.select_backend = lambda q, *_: reference_kernels.REFERENCE
    # Hybrid with ulysses 2 x ring 2 (the default degree would pick pure ulysses for 4 heads).
    degree = 2 if mode == "hybrid" else None
    layout = init_sequence_parallel(
        world, mode, num_heads=HEADS, num_kv_heads=kv_heads, ulysses_degree=degree
    )
    assert mode != "hybrid" or (layout.ulysses_size, layout.ring_size) == (2, 2)
    length = padded_length(real_length, layout.split_unit)
    q, k, v, weight, positions = make_inputs(length, kv_heads, packed)
    if length > real_length:
        # The SP pad continues the last document, and has no weight in the loss.
        positions[:, real_length:] = positions[:, real_length - 1 : real_length] + torch.arange(
            1, length - real_length + 1
        )
        weight[:, :, real_length:] = 0
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    sinks = torch.linspace(-1.0, 2.0, HEADS, dtype=torch.float64) if with_sinks else None
    reference_sinks = sinks.clone().requires_grad_(True) if with_sinks else None
    reference = naive_attention(*leaves, positions, window, softcap, reference_sinks)
    (reference * weight).sum().backward()
    index = shard_indices(
        length, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
    )
    local = [t[:, :, index].clone().requires_grad_(True) for t in (q, k, v)]
    local_weight, local_positions = weight[:, :, index], positions[:, index]
    local_sinks = sinks.clone().requires_grad_(True) if with_sinks else None
    with factories_default_to(factories_on) if factories_on else contextlib.nullcontext():
        out = sequence_parallel_attention(
            *local,
            local_positions,
            layout,
            1 / math.sqrt(DIM),
            window=window,
            softcap=softcap,
            sinks=local_sinks,
        )
        (out * local_weight).sum().backward()
    assert out.device.type == "cpu" and all(t.grad.device.type == "cpu" for t in local)
    errors = {
        "out": (out - reference[:, :, index]).abs().max().item(),
        **{
            name: (mine.grad - ref.grad[:, :, index]).abs().max().item()
            for name, mine, ref in zip("qkv", local, leaves)
        },
    }
    destroy_sequence_parallel(layout)
    if with_sinks:
        # Each rank holds the gradient of its share (its heads, its queries): they sum to the whole.
        return errors, local_sinks.grad, reference_sinks.grad
    return errors


CASES = [
    # (world, mode, kv_heads, packed, length)
    (2, "ulysses", 2, False, 24),
    (2, "ulysses", 1, True, 23),
    (2, "zigzag-ring", 2, False, 24),
    (2, "zigzag-ring", 1, True, 21),
    (4, "ulysses", 1, True, 30),
    (4, "ulysses", 2, False, 32),
    (4, "zigzag-ring", 2, True, 29),
    (4, "hybrid", 1, True, 27),
    (4, "hybrid", 2, False, 32),
]


@pytest.mark.parametrize(("world", "mode", "kv_heads", "packed", "length"), CASES)
def test_sequence_parallel_attention_matches_full_attention(world, mode, kv_heads, packed, length):
    for rank, errors in enumerate(run_ranks(_check, world, mode, kv_heads, packed, length)):
        assert max(errors.values()) < 1e-10, (rank, errors)


@pytest.mark.parametrize(
    ("world", "mode", "kv_heads", "packed", "length"),
    [(2, "zigzag-ring", 1, True, 21), (4, "hybrid", 2, False, 32)],
)
def test_ring_math_kernels_match_full_attention(world, mode, kv_heads, packed, length):
    """The pure-torch block kernels (used on devices without a fused kernel) are exact too."""
    for rank, errors in enumerate(run_ranks(_check, world, mode, kv_heads, packed, length, "math")):
        assert max(errors.values()) < 1e-10, (rank, errors)


WINDOW_CASES = [
    # (world, mode, kv_heads, packed, length, window, softcap); windows far shorter than the sequence
    (2, "ulysses", 2, True, 23, 5, 0.0),
    (2, "zigzag-ring", 1, True, 29, 4, 0.0),
    (2, "zigzag-ring", 2, False, 24, 9, 0.0),
    (4, "zigzag-ring", 2, True, 45, 3, 0.0),
    (4, "hybrid", 1, True, 37, 6, 0.0),
    (2, "ulysses", 2, False, 24, None, 0.7),
    (2, "zigzag-ring", 2, True, 27, None, 0.7),
    (4, "hybrid", 2, True, 35, 7, 0.7),  # Gemma 2: a window and the cap
]


@pytest.mark.parametrize(("world", "mode", "kv_heads", "packed", "length", "window", "softcap"), WINDOW_CASES)
@pytest.mark.parametrize("backend", ["native", "math"])
def test_sliding_windows_and_soft_capping_match_full_attention(
    world, mode, kv_heads, packed, length, window, softcap, backend
):
    """Windows in every mode (ring blocks outside every window are no pieces at all) and the Gemma 2
    cap inside the log-sum-exp merge, forward and backward, against textbook attention."""
    results = run_ranks(_check, world, mode, kv_heads, packed, length, backend, None, window, softcap)
    for rank, errors in enumerate(results):
        assert max(errors.values()) < 1e-10, (rank, errors)


SINK_CASES = [
    # (world, mode, kv_heads, packed, length, window): GPT-OSS alternates windowed and full layers
    (2, "ulysses", 2, True, 23, None),
    (2, "zigzag-ring", 1, True, 29, 4),
    (4, "hybrid", 2, True, 35, None),
]


@pytest.mark.parametrize(("world", "mode", "kv_heads", "packed", "length", "window"), SINK_CASES)
@pytest.mark.parametrize("backend", ["native", "math"])
def test_attention_sinks_join_each_softmax_once(world, mode, kv_heads, packed, length, window, backend):
    """GPT-OSS's per-head sinks in every mode: outputs, q/k/v gradients and the sinks' own gradient
    (summed over the ranks that each hold a share of it) equal textbook attention with the sink logit."""
    results = run_ranks(_check, world, mode, kv_heads, packed, length, backend, None, window, 0.0, True)
    for rank, (errors, _, _) in enumerate(results):
        assert max(errors.values()) < 1e-10, (rank, errors)
    total = sum(grad for _, grad, _ in results)
    torch.testing.assert_close(total, results[0][2], rtol=1e-10, atol=1e-10)
    assert results[0][2].abs().min() > 1e-3  # every sink matters in this case


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_local_attention_of_packed_and_padded_rows_matches_full_attention(backend, monkeypatch):
    """SP=1 (one rank holds the whole sequence): documents become varlen problems of one call."""
    from ulysses_pro.parallel import kernels
    from ulysses_pro.parallel.kernels import reference
    from ulysses_pro.parallel.plan import build_attention_plan

    if backend == "reference":
        monkeypatch.setattr(kernels, "select_backend", lambda q, *_: reference.REFERENCE)
    layout = init_sequence_parallel(1, "ulysses", num_heads=HEADS, num_kv_heads=2)
    q, k, v, weight, positions = make_inputs(40, 2, packed=True)
    positions[1, 30:] = torch.arange(10)  # row 1 gets a third document
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    expected = naive_attention(*leaves, positions)
    (expected * weight).sum().backward()
    plan = build_attention_plan(positions, layout)
    assert plan.whole is not None and plan.whole.sequences.count == 6  # 3 documents per row, one call
    local = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = sequence_parallel_attention(*local, None, layout, 1 / math.sqrt(DIM), plan=plan)
    (out * weight).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for mine, ref in zip(local, leaves):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-10, atol=1e-10)


def _bf16_check(rank, world, mode, backend):
    """bf16 inputs under CPU autocast vs the fp64 reference, and autocast on == off (bitwise)."""
    from ulysses_pro.parallel import kernels
    from ulysses_pro.parallel.kernels import reference as reference_kernels

    if backend == "math":
        kernels.select_backend = lambda q, *_: reference_kernels.REFERENCE
    degree = 2 if mode == "hybrid" else None
    layout = init_sequence_parallel(world, mode, num_heads=HEADS, num_kv_heads=2, ulysses_degree=degree)
    length = padded_length(29, layout.split_unit)
    q, k, v, weight, positions = make_inputs(length, 2, packed=True)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    expected = naive_attention(*leaves, positions)
    (expected * weight).sum().backward()
    index = shard_indices(
        length, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
    )

    def run(autocast: bool):
        local = [t[:, :, index].clone().requires_grad_(True) for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = sequence_parallel_attention(*local, positions[:, index], layout, 1 / math.sqrt(DIM))
            (out.double() * weight[:, :, index]).sum().backward()
        return [out, *(t.grad for t in local)]

    with_autocast, without = run(True), run(False)
    references = [expected[:, :, index], *(leaf.grad[:, :, index] for leaf in leaves)]
    scale = [r.abs().max().item() for r in references]
    destroy_sequence_parallel(layout)
    return {
        "dtypes": [t.dtype for t in with_autocast],
        "vs_fp64": max(
            (a.double() - r).abs().max().item() / s for a, r, s in zip(with_autocast, references, scale)
        ),
        "autocast_changes": max(
            (a.double() - b.double()).abs().max().item() for a, b in zip(with_autocast, without)
        ),
    }


@pytest.mark.parametrize("backend", ["native", "math"])
@pytest.mark.parametrize(("world", "mode"), [(2, "ulysses"), (2, "zigzag-ring"), (4, "hybrid")])
def test_bf16_autocast_keeps_forward_and_backward_in_step(world, mode, backend):
    """Under CPU autocast the ring merge stays fp32 and forward and backward compute alike: results
    equal the autocast-off run exactly and the fp64 reference within bf16 rounding."""
    for rank, result in enumerate(run_ranks(_bf16_check, world, mode, backend)):
        assert result["dtypes"] == [torch.bfloat16] * 4, (rank, result)
        assert result["autocast_changes"] == 0.0, (rank, result)
        assert result["vs_fp64"] < 2e-2, (rank, result)


def _ring_events(rank, world):
    """The order of ring sends/receives, their waits and the block computations (forward, backward)."""
    from ulysses_pro.parallel import comm, ring

    events = []
    real_shift, real_wait = ring.start_ring_shift, comm.PendingShift.wait
    real_forward, real_backward = ring.block_forward, ring.block_backward

    def shift(*args, **kwargs):
        events.append("post")
        return real_shift(*args, **kwargs)

    def wait(self):
        events.append("wait")
        return real_wait(self)

    def forward(*args, **kwargs):
        events.append("compute")
        return real_forward(*args, **kwargs)

    def backward(*args, **kwargs):
        events.append("compute")
        return real_backward(*args, **kwargs)

    ring.start_ring_shift, comm.PendingShift.wait = shift, wait
    ring.block_forward, ring.block_backward = forward, backward
    layout = init_sequence_parallel(world, "zigzag-ring", num_heads=HEADS, num_kv_heads=2)
    q, k, v, weight, positions = make_inputs(16, 2, packed=False)
    index = shard_indices(16, 1, world, 0, layout.ring_rank)
    local = [t[:, :, index].clone().requires_grad_(True) for t in (q, k, v)]
    out = sequence_parallel_attention(*local, positions[:, index], layout, 0.3)
    forward_events = list(events)
    events.clear()
    (out * weight[:, :, index]).sum().backward()
    destroy_sequence_parallel(layout)
    return forward_events, list(events)


def test_ring_posts_the_next_block_before_computing():
    """Communication overlaps compute, on the two ranks of a ring (every offset needed)."""
    for forward, backward in run_ranks(_ring_events, 2):
        # step 0 computes while block 1 is in flight; only then is it waited for
        assert forward[0] == "post" and forward.index("compute") < forward.index("wait"), forward
        # backward: the next block is posted before step 0 computes; step 0 is this rank's own block
        # (its gradients stay here), step 1's gradients go home after it computes and are waited for last
        assert backward[0] == "post" and backward.index("compute") < backward.index("wait"), backward
        last_compute = len(backward) - 1 - backward[::-1].index("compute")
        assert backward.count("post") == 2 and backward[last_compute + 1 :] == ["post", "wait"], backward


def _peers_talked_to(rank, world, window):
    """Global ranks this rank sent to / received from in one forward + backward, and the forward's posts."""
    from ulysses_pro.parallel import ring

    talked, posts = set(), []
    real_shift = ring.start_ring_shift

    def shift(tensors, send_to, receive_from, group):
        talked.update((send_to, receive_from))
        posts.append(send_to)
        return real_shift(tensors, send_to, receive_from, group)

    ring.start_ring_shift = shift
    layout = init_sequence_parallel(world, "zigzag-ring", num_heads=HEADS, num_kv_heads=2)
    q, k, v, weight, positions = make_inputs(64, 2, packed=False)
    index = shard_indices(64, 1, world, 0, layout.ring_rank)
    local = [t[:, :, index].clone().requires_grad_(True) for t in (q, k, v)]
    out = sequence_parallel_attention(*local, positions[:, index], layout, 0.3, window=window)
    forward_posts = len(posts)
    (out * weight[:, :, index]).sum().backward()
    destroy_sequence_parallel(layout)
    return talked, forward_posts


def test_a_short_window_talks_only_to_the_zigzag_neighbours():
    """A window shorter than a block (4 ranks, blocks of 8 tokens, window 5): rank r needs only the
    blocks of r - 1 and r + 1, so offset 2 is neither computed nor sent; full attention fetches 3."""
    for rank, (talked, forward_posts) in enumerate(run_ranks(_peers_talked_to, 4, 5)):
        assert talked == {(rank - 1) % 4, (rank + 1) % 4}, (rank, talked)
        assert forward_posts == 2
    for rank, (talked, forward_posts) in enumerate(run_ranks(_peers_talked_to, 4, None)):
        assert forward_posts == 3 and talked == {0, 1, 2, 3} - {rank}

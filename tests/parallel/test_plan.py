"""The per-forward attention plan: every allowed (query, key) pair exactly once, nothing else.

Allowed means same document and key not after query in global token order (DESIGN contracts 4
and 5). The plan is checked by brute force over ring sizes, ranks and packed layouts, and padded
rows are shown to cost one attention problem per row.
"""

from __future__ import annotations

import random

import pytest
import torch

from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.data.packing import shifted
from ulysses_pro.parallel.mesh import init_sequence_parallel
from ulysses_pro.parallel.plan import DocumentLayout, build_attention_plan, build_plan
from ulysses_pro.parallel.sharding import ring_runs

CPU = torch.device("cpu")


def _document_of(starts: list[int], length: int) -> list[int]:
    docs, current = [], -1
    for index in range(length):
        if index in starts:
            current += 1
        docs.append(current)
    return docs


def _flash_sees(qi: int, ki: int, queries: int, keys: int, causal: bool, window: int) -> bool:
    """Whether a flash kernel lets query qi see key ki of one problem (bottom-right aligned; a
    windowed call's unlimited right side becomes the key count, as flash-attn and ATen do)."""
    diagonal = qi + keys - queries
    if causal and ki > diagonal:
        return False
    return window < 0 or diagonal - window <= ki <= diagonal + keys


def _covered_pairs(plan, length, ring_size, ring_rank):
    """{(row, global query, global key): times covered} from every piece of every step."""
    q_global = [g for start, stop in ring_runs(length, ring_size, ring_rank) for g in range(start, stop)]
    counts: dict[tuple[int, int, int], int] = {}
    for offset, pieces in zip(plan.offsets, plan.steps):
        k_runs = ring_runs(length, ring_size, (ring_rank - offset) % ring_size)
        k_global = [g for start, stop in k_runs for g in range(start, stop)]
        for piece in pieces:
            sub_q = q_global[piece.q]
            sub_k = k_global[piece.k]
            for problem_row, qs, ks in piece.sequences.problems(len(sub_q), len(sub_k)):
                row = piece.rows.start + problem_row
                size_q, size_k = qs.stop - qs.start, ks.stop - ks.start
                for qi in range(qs.start, qs.stop):
                    for ki in range(ks.start, ks.stop):
                        query, key = sub_q[qi], sub_k[ki]
                        if not _flash_sees(
                            qi - qs.start, ki - ks.start, size_q, size_k, piece.causal, piece.window
                        ):
                            continue
                        counts[(row, query, key)] = counts.get((row, query, key), 0) + 1
    return counts, q_global


@pytest.mark.parametrize("window", [None, 1, 3, 7, 20])
@pytest.mark.parametrize("ring_size", [1, 2, 3, 4])
def test_plan_covers_each_allowed_pair_once(ring_size, window):
    """Every piece read with flash's own window rules (what the CUDA kernels do), with sliding
    windows too: a query sees the window - 1 keys before it and itself, in its own document."""
    generator = random.Random(ring_size * 100 + (window or 0))
    length = 24 * ring_size
    for trial in range(6):
        starts = [sorted({0, *generator.sample(range(1, length), generator.randint(0, 6))}) for _ in range(2)]
        if trial == 0:
            starts = [[0], [0]]  # unpacked rows
        documents = [_document_of(row, length) for row in starts]
        for ring_rank in range(ring_size):
            plan = build_plan(starts, length, ring_size, ring_rank, CPU, window)
            counts, q_global = _covered_pairs(plan, length, ring_size, ring_rank)
            assert set(counts.values()) <= {1}, "a pair covered twice"
            for row in range(2):
                for query in q_global:
                    for key in range(length):
                        allowed = key <= query and documents[row][key] == documents[row][query]
                        allowed = allowed and (window is None or query - key < window)
                        assert ((row, query, key) in counts) == allowed, (starts, ring_rank, row, query, key)


@pytest.mark.parametrize("ring_size", [1, 2, 4])
def test_chunked_plan_keeps_each_query_in_its_document_chunk(ring_size):
    """Llama 4's chunked layers: a query sees the keys of its own `chunk`-token chunk, the chunk
    grid starting at its document's start (as for the document alone)."""
    generator = random.Random(ring_size)
    length, chunk = 24 * ring_size, 5
    for _trial in range(4):
        starts = [sorted({0, *generator.sample(range(1, length), generator.randint(0, 4))}) for _ in range(2)]
        chunked = DocumentLayout(starts, length, CPU).in_chunks(chunk)
        for row in range(2):
            documents = _document_of(starts[row], length)
            offsets = [index - max(s for s in starts[row] if s <= index) for index in range(length)]
            for ring_rank in range(ring_size):
                plan = build_plan(chunked.starts, length, ring_size, ring_rank, CPU)
                counts, q_global = _covered_pairs(plan, length, ring_size, ring_rank)
                for query in q_global:
                    for key in range(length):
                        allowed = key <= query and documents[key] == documents[query]
                        allowed = allowed and offsets[key] // chunk == offsets[query] // chunk
                        assert ((row, query, key) in counts) == allowed, (starts, ring_rank, query, key)


def test_padded_rows_are_one_problem_each():
    """A row of 100 tokens + 50 pads (beside a 150-token row) is one problem: one uniform call."""
    rows = [shifted([7] * 150, [7] * 150), shifted([5] * 100, [5] * 100)]
    positions = PaddingCollator(pad_token_id=0)(rows)["position_ids"]
    layout = init_sequence_parallel(1, "ulysses", num_heads=4, num_kv_heads=2)
    plan = build_attention_plan(positions, layout)
    assert plan.whole is not None and plan.whole.sequences.uniform and plan.whole.sequences.count == 2

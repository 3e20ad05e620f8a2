"""The registered SP attention function: one plan (and one metadata all-gather) per forward, not per
layer; and a forward without position ids is refused instead of silently attending shard-locally."""

from __future__ import annotations

import pytest
import torch

from ..launcher import run_ranks


def _count_plans(rank, world, arch, overrides):
    from ulysses_pro.models import attention
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.parallel import destroy_sequence_parallel, init_sequence_parallel, sharding

    gathers, plans = [], []
    real_gather, real_plan = sharding.all_gather_sequence, attention.plan_for

    def counting_gather(x, group):  # every position-id all-gather, whoever asks for it
        gathers.append(x.shape)
        return real_gather(x, group)

    def counting_plan(documents, layout, window=None):
        plans.append(window)
        return real_plan(documents, layout, window)

    sharding.all_gather_sequence, attention.plan_for = counting_gather, counting_plan
    model = build_tiny_model(arch, num_layers=3, seed=1, **overrides)
    layout = init_sequence_parallel(world, "ulysses", num_heads=4, num_kv_heads=2)
    attention.apply_sequence_parallel(model, layout)
    ids = torch.randint(3, 500, (1, 4))  # this rank's shard of an 8-token sequence
    for _ in range(2):  # two batches, each with a new position-id tensor
        model(input_ids=ids, position_ids=torch.arange(4 * rank, 4 * rank + 4)[None])
    destroy_sequence_parallel(layout)
    return len(gathers), plans


@pytest.mark.parametrize(
    ("arch", "overrides", "windows"),
    [
        ("llama", {}, [None, None]),
        # sliding, full, sliding: two plans per forward (one per window size), one gather
        ("gemma3", {"sliding_window": 3, "sliding_window_pattern": 2}, [3, None, 3, None]),
        # two Gated DeltaNet layers and one attention layer: the mixers' documents are the plan's
        ("qwen3_next", {}, [None, None]),
    ],
)
def test_attention_plan_is_built_once_per_forward(arch, overrides, windows):
    for gathers, plans in run_ranks(_count_plans, 2, arch, overrides):
        assert gathers == 2  # 3 layers x 2 forwards would be 6 without the cache
        assert plans == windows


def test_forward_without_position_ids_is_refused():
    """transformers would fill in a shard-local arange; the hook stops that forward and says what to pass."""
    from ulysses_pro.models.attention import (
        apply_sequence_parallel,
        remove_sequence_parallel,
        unsharded_attention,
    )
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.parallel import init_sequence_parallel

    model = build_tiny_model("llama", num_layers=1, seed=1)
    layout = init_sequence_parallel(1, "ulysses", num_heads=4, num_kv_heads=2)
    previous = apply_sequence_parallel(model, layout)
    ids = torch.randint(3, 500, (1, 6))
    with pytest.raises(ValueError, match="position_ids.*split_for_sequence_parallel"):
        model(input_ids=ids)
    model(input_ids=ids, position_ids=torch.arange(6)[None])  # given: fine
    model(ids, None, torch.arange(6)[None])  # given positionally: fine
    with unsharded_attention(model, previous):
        model(input_ids=ids)  # ordinary attention (e.g. generation): transformers' default is right
    remove_sequence_parallel(model, previous)
    model(input_ids=ids)


def test_llama4_packed_documents_get_their_own_chunks_and_temperature():
    """Llama 4 scales its NoPE queries by the position in the row; isolated, a packed document gets
    the scales and chunks it gets alone (chunks of 32 and a temperature floor of 8 bite here)."""
    from ulysses_pro.models.attention import isolate_packed_documents
    from ulysses_pro.models.tiny import build_tiny_model

    from .recurrent.packing import assert_packed_equals_alone, packed_and_alone

    model = build_tiny_model("llama4_text")
    packed, alone = packed_and_alone(model)
    assert (packed - alone).abs().max() > 1e-4  # transformers: the row's temperature
    isolate_packed_documents(model)
    assert_packed_equals_alone(model)


@pytest.mark.parametrize(
    ("finetuning_type", "keys"),
    [
        ("full", {}),  # trainable weights upcast to fp32, embeddings included
        ("freeze", {}),
        ("lora", {}),
        ("lora", {"additional_target": "embed_tokens"}),  # trained embeddings: fp32 again
    ],
)
def test_q_k_v_reach_the_kernel_in_the_autocast_dtype(monkeypatch, finetuning_type, keys):
    """bf16: true under CPU autocast: the SP attention receives q, k, v in bf16 whatever the loader
    upcast (fp32 q/k would take the tiled reference kernel on CUDA)."""
    from ulysses_pro.models import attention
    from ulysses_pro.models.loader import load_model, load_tokenizer
    from ulysses_pro.parallel import destroy_sequence_parallel, init_sequence_parallel

    from ..train.harness import training_config

    config = training_config(finetuning_type=finetuning_type, bf16=True, dataset="demo_chat", **keys)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, config.finetuning, tokenizer, config.training)
    seen, real = [], attention.sequence_parallel_attention

    def spy(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return real(query, key, value, *args, **kwargs)

    monkeypatch.setattr(attention, "sequence_parallel_attention", spy)
    layout = init_sequence_parallel(1, "ulysses", num_heads=4, num_kv_heads=2)
    attention.apply_sequence_parallel(model, layout)
    try:
        ids = torch.randint(3, 500, (1, 8))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, position_ids=torch.arange(8)[None]).logits.float().sum().backward()
    finally:
        destroy_sequence_parallel(layout)
    assert seen and all(dtypes == (torch.bfloat16,) * 3 for dtypes in seen), seen

"""The XTuner-style names, used by hand on two ranks: a plain loop without our trainer."""

from __future__ import annotations

import torch

from ..launcher import run_ranks


def _manual_loop(rank, world):
    import ulysses_pro
    from ulysses_pro.models.memory import token_loss_head
    from ulysses_pro.models.tiny import build_tiny_model

    torch.manual_seed(0)
    ids = torch.randint(3, 500, (1, 19))
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
    batch = {"input_ids": ids, "shift_labels": labels, "position_ids": torch.arange(19)[None]}

    def loss_of(model, batch, layout=None):
        with token_loss_head(model, batch["shift_labels"]):
            losses = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits
        count = batch["shift_labels"].ne(-100).sum()
        if layout is None:  # the single-process reference: a plain token mean
            return losses.sum() / count
        return ulysses_pro.reduce_sequence_parallel_loss(losses.sum(), count, layout.sp_group)

    reference_model = build_tiny_model("llama", seed=1)
    reference = loss_of(reference_model, batch)
    reference.backward()

    model = build_tiny_model("llama", seed=1)
    layout = ulysses_pro.init_sequence_parallel(world, "zigzag-ring", num_heads=4, num_kv_heads=2)
    ulysses_pro.apply_sequence_parallel(model, layout)
    sampler = ulysses_pro.SequenceParallelSampler(10, layout.dp_size, layout.dp_rank, seed=3)
    padded = ulysses_pro.pad_for_sequence_parallel(batch, layout.split_unit, pad_token_id=0)
    local = ulysses_pro.split_for_sequence_parallel(
        padded, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
    )
    loss = loss_of(model, local, layout)
    loss.backward()
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)  # each rank holds its share of the mean
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.distributed.all_reduce(grads)  # sum of the ranks' shares = full gradient
    ref_grads = torch.cat([p.grad.flatten() for p in reference_model.parameters()])
    from ulysses_pro.parallel import destroy_sequence_parallel

    destroy_sequence_parallel(layout)  # subgroups left alive can abort the process at exit
    return (
        (total - reference).abs().item(),
        ((grads - ref_grads).norm() / ref_grads.norm()).item(),
        list(sampler),
    )


def test_manual_sequence_parallel_loop_matches_reference():
    results = run_ranks(_manual_loop, 2)
    for loss_error, grad_error, _ in results:
        assert loss_error < 1e-5 and grad_error < 1e-5
    assert results[0][2] == results[1][2]  # one SP group: both ranks see the same samples

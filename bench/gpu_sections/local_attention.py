"""Varlen local attention (packed documents, the SP=1 path) against per-document SDPA, and host syncs
of a model forward + backward under CUDA's sync-debug mode."""

from __future__ import annotations

import time
import warnings

import torch

from .common import device_of, max_rel, section


@section("varlen local attention and host syncs")
def check_local_attention(args):
    import torch.nn.functional as F

    from ulysses_pro.parallel import init_sequence_parallel
    from ulysses_pro.parallel.hybrid import sequence_parallel_attention
    from ulysses_pro.parallel.plan import build_attention_plan

    device = device_of(args)
    dtype = torch.float32 if args.cpu_dry_run else torch.bfloat16
    docs = [256, 1024, 512, 2048, 96] if not args.cpu_dry_run else [5, 9, 3]
    length = sum(docs)
    positions = torch.cat([torch.arange(n) for n in docs])[None].to(device)
    layout = init_sequence_parallel(1, "ulysses", num_heads=8, num_kv_heads=2)
    generator = torch.Generator(device=device).manual_seed(1)
    q = torch.randn(1, 8, length, 64, device=device, dtype=dtype, generator=generator).requires_grad_()
    k = torch.randn(1, 2, length, 64, device=device, dtype=dtype, generator=generator).requires_grad_()
    v = torch.randn(1, 2, length, 64, device=device, dtype=dtype, generator=generator).requires_grad_()
    grad = torch.randn(1, 8, length, 64, device=device, dtype=dtype, generator=generator)

    def ours():
        plan = build_attention_plan(positions, layout)
        return sequence_parallel_attention(q, k, v, None, layout, 0.125, plan=plan)

    def per_document():
        pieces, start = [], 0
        for n in docs:
            s = slice(start, start + n)
            pieces.append(
                F.scaled_dot_product_attention(
                    q[:, :, s], k[:, :, s], v[:, :, s], is_causal=True, scale=0.125, enable_gqa=True
                )
            )
            start += n
        return torch.cat(pieces, dim=2)

    results = {}
    for name, run in (("ours", ours), ("sdpa per document", per_document)):
        q.grad = k.grad = v.grad = None
        out = run()
        out.backward(grad)
        results[name] = [out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()]
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(5):
            run().backward(grad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[name + " ms"] = round((time.perf_counter() - started) / 5 * 1000, 2)
    errors = [max_rel(a, b) for a, b in zip(results["ours"], results["sdpa per document"])]
    outcome = {
        "max_rel_error": max(errors),
        "ms ours": results["ours ms"],
        "ms per-document sdpa": results["sdpa per document ms"],
    }
    outcome["syncs per forward+backward (1 layer, 3 layers)"] = [
        _count_syncs(args, layers) for layers in (1, 3)
    ]
    syncs = outcome["syncs per forward+backward (1 layer, 3 layers)"]
    outcome["status"] = (
        "PASS"
        if max(errors) < (3e-2 if dtype == torch.bfloat16 else 1e-5) and syncs[1] <= syncs[0]
        else "FAIL"
    )
    return outcome


def _count_syncs(args, layers: int):
    if args.cpu_dry_run:
        return "n/a on CPU"
    from ulysses_pro.models.attention import apply_sequence_parallel
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.parallel import init_sequence_parallel

    model = build_tiny_model("llama", num_layers=layers, seed=1).cuda().to(torch.bfloat16)
    apply_sequence_parallel(model, init_sequence_parallel(1, "ulysses", num_heads=4, num_kv_heads=2))
    ids = torch.randint(3, 500, (2, 256), device="cuda")
    positions = torch.cat([torch.arange(100), torch.arange(156)]).repeat(2, 1).cuda()
    model(input_ids=ids, position_ids=positions, use_cache=False).logits.float().mean().backward()  # warm-up
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model(input_ids=ids, position_ids=positions, use_cache=False).logits.float().mean().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)

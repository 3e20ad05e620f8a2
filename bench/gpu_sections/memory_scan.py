"""Memory scan of a Llama-3-8B-shaped model (random bf16 weights, LoRA) with the whole memory stack:
fixed and per-layer memory, the longest length for 32 layers on this GPU, and MFU at 32K."""

from __future__ import annotations

import contextlib
import math
import os
import time

import torch
from memory_probe import LiveTensorBytes

from .common import START, device_of, section

LLAMA3_8B = {
    "hidden_size": 4096,
    "num_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}
TOY = {
    "hidden_size": 64,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 512,
}


def _scan_step(shape: dict, layers: int, length: int, device, timed: bool = False) -> dict:
    """One LoRA step (forward, backward, optimizer) with the whole memory stack; peak bytes, seconds."""
    from peft import LoraConfig, get_peft_model

    from ulysses_pro.config.args import MemoryArguments, ModelArguments
    from ulysses_pro.models.memory import token_loss_head
    from ulysses_pro.models.memory_stack import apply_memory_stack
    from ulysses_pro.models.tiny import build_tiny_model

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = build_tiny_model(
            "llama",
            seed=0,
            num_layers=layers,
            max_position_embeddings=2 * length,
            rope_theta=500000.0,
            **shape,
        )
    model = model.to(dtype)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        ),
    )
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    memory = MemoryArguments(
        gradient_checkpointing_offload=device.type == "cuda", tiled_mlp=True, tiled_mlp_tile_tokens=16384
    )
    head = apply_memory_stack(model, ModelArguments(), memory, training=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(3, shape["vocab_size"], (1, length), device=device)
    positions = torch.arange(length, device=device)[None]

    def step():
        targets = torch.roll(ids, -1, 1)
        with (
            torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"),
            token_loss_head(model, targets, head_options=head, reduction="sum"),
        ):
            loss = model(input_ids=ids, position_ids=positions, use_cache=False).logits / length
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if timed or length <= 131072:
        step()  # warm-up (kernels, optimizer state); skipped for the longest, slowest points
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tracker = None if device.type == "cuda" else LiveTensorBytes()
    started = time.perf_counter()
    with tracker if tracker is not None else contextlib.nullcontext():
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else tracker.peak
    seconds = time.perf_counter() - started
    return {"peak_gib": peak / 2**30, "seconds": seconds}


def _model_flops(shape: dict, layers: int, length: int) -> float:
    """Forward + backward FLOPs of one LoRA step (frozen linears: activation gradients only), no recompute."""
    h, i, heads, kv, d = (
        shape["hidden_size"],
        shape["intermediate_size"],
        shape["num_heads"],
        shape["num_kv_heads"],
        shape["head_dim"],
    )
    linear = h * heads * d * 2 + h * kv * d * 2 + 3 * h * i  # q, o, k, v, gate/up/down weights per layer
    head = h * shape["vocab_size"]
    attention = 2 * 2 * length * heads * d / 2  # QK^T and PV per token, causal half
    forward = 2 * (layers * linear + head) * length + layers * attention * length
    backward = 2 * (layers * linear + head) * length + 2 * layers * attention * length
    return forward + backward


@section("memory scan, Llama-3-8B shape")
def check_memory_scan(args):
    device = device_of(args)
    shape = TOY if args.cpu_dry_run else LLAMA3_8B
    lengths = [256, 512] if args.cpu_dry_run else [65536, 131072, 262144, 524288, 1048576]
    deadline = START + args.budget_s
    rows, last = {}, {}
    for length in lengths:
        for layers in (2, 4):
            # attention time grows with L^2: skip a point that would run past the budget
            if layers in last:
                previous_length, previous_seconds = last[layers]
                estimate = previous_seconds * (length / previous_length) ** 2 * (1 if length > 131072 else 2)
                if time.perf_counter() + estimate > deadline - 60:
                    print(f"  layers {layers}, L {length}: skipped (about {estimate:.0f} s, past the budget)")
                    continue
            try:
                rows[(layers, length)] = _scan_step(shape, layers, length, device)
            except torch.OutOfMemoryError:
                rows[(layers, length)] = {"peak_gib": math.inf, "seconds": math.nan}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"  layers {layers}, L {length}: {rows[(layers, length)]}", flush=True)
            if math.isfinite(rows[(layers, length)]["peak_gib"]):
                last[layers] = (length, rows[(layers, length)]["seconds"])
    table = []
    for length in lengths:
        two, four = rows.get((2, length)), rows.get((4, length))
        if not two or not four or not math.isfinite(four["peak_gib"]):
            continue
        per_layer = (four["peak_gib"] - two["peak_gib"]) / 2
        fixed = two["peak_gib"] - 2 * per_layer
        table.append(
            {
                "L": length,
                "fixed_gib": round(fixed, 2),
                "per_layer_gib": round(per_layer, 3),
                "32_layers_gib": round(fixed + 32 * per_layer, 1),
            }
        )
    outcome = {"scan": table}
    if len(table) >= 2 and device.type == "cuda":
        capacity = torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.95
        a, b = table[-2], table[-1]
        slope = (b["32_layers_gib"] - a["32_layers_gib"]) / (b["L"] - a["L"])
        longest = b["L"] + (capacity - b["32_layers_gib"]) / slope if slope > 0 else math.inf
        host_gib = 32 * longest * shape["hidden_size"] * 2 / 2**30  # offloaded bf16 layer inputs
        host_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        outcome.update(
            longest_tokens_32_layers=int(longest),
            host_gib_needed=round(host_gib, 1),
            host_gib=round(host_total, 1),
        )
    mfu_length = 512 if args.cpu_dry_run else 32768
    timing = _scan_step(shape, 4, mfu_length, device, timed=True)
    achieved = _model_flops(shape, 4, mfu_length) / timing["seconds"]
    peak_flops = {"H100": 989.4e12, "H200": 989.4e12}
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else ""
    peak = next((v for k, v in peak_flops.items() if k in name), None)
    outcome["tflops_at_32k_4_layers"] = round(achieved / 1e12, 1)
    outcome["mfu_at_32k"] = round(achieved / peak, 3) if peak else "unknown peak for this GPU"
    return outcome

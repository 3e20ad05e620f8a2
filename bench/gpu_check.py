"""The GPU check: run it at once whenever a CUDA GPU is at hand (one H100/H200: under 8 minutes).

    PYTHONPATH=src python bench/gpu_check.py [--budget-s 420] [--out DIR]
    python bench/gpu_check.py --cpu-dry-run        # every section at toy sizes on the CPU

On a lent machine without a package registry, run the project from `src/` and, if its
transformers / peft / accelerate are older than our pins, unpack wheels downloaded here with
`scripts/gpu_wheels.sh` (pure-Python wheels only; never build flash-attn there): this script puts
`.gpu-wheels/*.whl` (unpacked into a temporary folder) in front of `sys.path` when the folder exists.

Sections (each prints PASS / FAIL / SKIP and numbers; a failure does not stop the rest):
1. kernels: every kernel call kind (causal, full, varlen, sliding windows, soft-capping; GQA 8/2 heads)
   on CUDA in bf16 and fp32
   against an fp64 reference, forward and the two-block (ring) backward; and the flash kernels
   (torch's or flash-attn's) are the ones used for bf16;
2. varlen local attention (packed documents, SP=1 path) against per-document SDPA, values, gradients
   and time; host syncs of a model forward + backward with 1 and 3 layers (CUDA sync debug mode);
3. a few bf16 SFT steps of a tiny model on CUDA against the same steps in fp32 on the CPU;
4. FSDP2 through accelerate at world size 1 (the weights become DTensors; losses as without it);
5. memory scan: a Llama-3-8B-shaped model (random bf16 weights, LoRA) with 2 and 4 layers at 64K to
   1M tokens with the whole memory stack: fixed and per-layer memory, the longest length extrapolated
   for 32 layers on this GPU (and the host memory the offloaded checkpoints need), and MFU at 32K.
One GPU cannot host two NCCL ranks, so multi-rank paths (ulysses / ring / hybrid over NCCL) are not
run here; the CPU suite proves them on gloo (tests/parallel, tests/train).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _use_carried_wheels() -> None:
    """Put the carried wheels first, but only when the machine's own transformers is older than our pin."""
    import importlib.metadata

    wheels = sorted((ROOT / ".gpu-wheels").glob("*.whl"))
    try:
        own = tuple(int(x) for x in importlib.metadata.version("transformers").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        own = (0, 0)
    if not wheels or own >= (5, 23):
        return
    target = Path(tempfile.mkdtemp(prefix="gpu-wheels-"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    sys.path.insert(0, str(target))
    print(f"using carried wheels: {', '.join(w.name for w in wheels)}")


_use_carried_wheels()
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from memory_probe import LiveTensorBytes  # noqa: E402

RESULTS: dict[str, dict] = {}


def section(name: str):
    def run(function):
        def wrapped(args):
            started = time.perf_counter()
            try:
                outcome = function(args) or {}
                status = outcome.pop("status", "PASS")
            except _Skip as skip:
                status, outcome = "SKIP", {"why": str(skip)}
            except Exception as error:  # report and carry on with the other sections
                status, outcome = (
                    "FAIL",
                    {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()},
                )
            outcome["seconds"] = round(time.perf_counter() - started, 1)
            RESULTS[name] = {"status": status, **outcome}
            shown = {k: v for k, v in outcome.items() if k != "trace"}
            print(f"[{status}] {name}: {json.dumps(shown, default=str)}", flush=True)
            if status == "FAIL":
                print(outcome["trace"], flush=True)

        return wrapped

    return run


class _Skip(Exception):
    pass


def _device(args) -> torch.device:
    return torch.device("cpu") if args.cpu_dry_run else torch.device("cuda")


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


@section("environment")
def check_environment(args):
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = "not installed"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = torch.cuda.get_device_capability(0)
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["torch_flash_available"] = torch.backends.cuda.is_flash_attention_available()
    elif not args.cpu_dry_run:
        raise RuntimeError("no CUDA device visible (use --cpu-dry-run to exercise the script on a CPU)")
    return info


@section("kernels against fp64")
def check_kernels(args):
    from ulysses_pro.parallel import kernels
    from ulysses_pro.parallel.kernels import Sequences, block_backward, block_forward, cuda, reference

    device = _device(args)
    batch, length, heads, kv_heads, dim = 2, 512 if not args.cpu_dry_run else 32, 8, 2, 64
    doc = [0, length // 4, length // 2, length, length + length // 3, 2 * length]
    rows = Sequences.rows(batch, length, length, device)
    calls = {  # kind: (causal, sequences, window, softcap); the cap applies to both key blocks
        "causal": (True, rows, -1, 0.0),
        "full": (False, rows, -1, 0.0),
        "varlen": (True, Sequences.build(doc, doc, uniform=False, device=device), -1, 0.0),
        "causal window L/8": (True, rows, length // 8 - 1, 0.0),
        "rectangle window": (False, rows, length // 3, 0.0),
        "softcap 2.0": (True, rows, -1, 2.0),
        "softcap + window": (True, rows, length // 8 - 1, 2.0),
    }
    worst = {}
    for dtype in (torch.bfloat16, torch.float32):
        for kind, (causal, sequences, window, cap) in calls.items():
            shape = {"window": window, "softcap": cap}
            capped = {"softcap": cap}
            generator = torch.Generator(device=device).manual_seed(0)

            def draw(h, n, _g=generator):
                return torch.randn(batch, h, n, dim, device=device, generator=_g)

            q, k, v, grad = (
                draw(heads, length),
                draw(kv_heads, length),
                draw(kv_heads, length),
                draw(heads, length),
            )
            k2, v2 = draw(kv_heads, length // 2), draw(kv_heads, length // 2)
            lo = [t.to(dtype) for t in (q, k, v, k2, v2)]
            path = f"check {dtype}" + (f" {kind}" if window >= 0 or cap else "")
            out, lse = block_forward(lo[0], lo[1], lo[2], 0.125, causal, sequences, path=path, **shape)
            every = Sequences.rows(batch, length, length // 2, device)
            out2, lse2 = block_forward(lo[0], lo[3], lo[4], 0.125, False, every, path=path, **capped)
            final_lse = torch.logaddexp(lse, lse2)
            final = (
                out.float() * torch.exp(lse - final_lse)[..., None]
                + out2.float() * torch.exp(lse2 - final_lse)[..., None]
            )
            grads_a = block_backward(
                grad.to(dtype), lo[0], lo[1], lo[2], final, final_lse, 0.125, causal, sequences, **shape
            )
            grads_b = block_backward(
                grad.to(dtype), lo[0], lo[3], lo[4], final, final_lse, 0.125, False, every, **capped
            )
            # fp64 reference of attention over both blocks, from the same (rounded) inputs
            ref_inputs = [t.double() for t in lo]
            want_out, want_lse = reference.REFERENCE.forward(
                *ref_inputs[:3], 0.125, causal, sequences, window, cap
            )
            want2, want2_lse = reference.REFERENCE.forward(
                ref_inputs[0], *ref_inputs[3:], 0.125, False, every, -1, cap
            )
            joint_lse = torch.logaddexp(want_lse, want2_lse)
            joint = (
                want_out * torch.exp(want_lse - joint_lse)[..., None]
                + want2 * torch.exp(want2_lse - joint_lse)[..., None]
            )
            want_a = reference.REFERENCE.backward(
                grad.double(), *ref_inputs[:3], joint, joint_lse, 0.125, causal, sequences, window, cap
            )
            want_b = reference.REFERENCE.backward(
                grad.double(), ref_inputs[0], *ref_inputs[3:], joint, joint_lse, 0.125, False, every, -1, cap
            )
            errors = [_max_rel(final, joint), _max_rel(grads_a[0] + grads_b[0], want_a[0] + want_b[0])]
            errors += [
                _max_rel(g, w) for g, w in zip([*grads_a[1:], *grads_b[1:]], [*want_a[1:], *want_b[1:]])
            ]
            worst[f"{str(dtype)[6:]} {kind}"] = max(errors)
    used = kernels.kernels_used()
    outcome = {"max_rel_error": worst, "kernels": used}
    bf16_ok = all(e < 3e-2 for key, e in worst.items() if key.startswith("bfloat16"))
    fp32_ok = all(e < 1e-4 for key, e in worst.items() if key.startswith("float32"))
    flash = used.get("check torch.bfloat16", "")
    flash_ok = args.cpu_dry_run or flash in (cuda.ATEN_FLASH.name,) or flash.startswith("flash-attn")
    # Windows reach a flash kernel when this torch's has window arguments (or flash-attn is there);
    # the cap does on flash-attn only (PyTorch's CUDA kernel has none: the reference path runs it).
    windowed = used.get("check torch.bfloat16 causal window L/8", "")
    if not args.cpu_dry_run and (cuda.aten_flash_takes_windows() or cuda.flash_attn_package()):
        flash_ok = flash_ok and windowed != reference.REFERENCE.name
    outcome["status"] = "PASS" if bf16_ok and fp32_ok and flash_ok else "FAIL"
    return outcome


@section("varlen local attention and host syncs")
def check_local_attention(args):
    import torch.nn.functional as F

    from ulysses_pro.parallel import init_sequence_parallel
    from ulysses_pro.parallel.hybrid import sequence_parallel_attention
    from ulysses_pro.parallel.plan import build_attention_plan

    device = _device(args)
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
    errors = [_max_rel(a, b) for a, b in zip(results["ours"], results["sdpa per document"])]
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
        if max(errors) < (3e-2 if dtype == torch.bfloat16 else 1e-5) and syncs[0] == syncs[1]
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


def _train(keys: dict) -> list[float]:
    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    base = {
        "model_name_or_path": "tiny:llama?hidden_size=256&num_layers=4&num_heads=8&num_kv_heads=2",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "demo_chat",
        "dataset_dir": str(ROOT / "data"),
        "cutoff_len": 256,
        "max_samples": 32,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "max_grad_norm": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "overwrite_output_dir": True,
        "output_dir": tempfile.mkdtemp(prefix="gpu-check-"),
    }
    trainer = run_stage(load_config({**base, **keys}))
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@section("bf16 SFT on CUDA against fp32 on the CPU")
def check_sft(args):
    if args.cpu_dry_run:
        gpu = _train({"use_cpu": True, "bf16": True, "max_steps": 2})
        cpu = _train({"use_cpu": True, "max_steps": 2})
    else:
        gpu = _train({"bf16": True})
        cpu = _train({"use_cpu": True})
    worst = max(abs(a - b) / abs(b) for a, b in zip(gpu, cpu))
    return {
        "losses bf16": gpu,
        "losses fp32 cpu": cpu,
        "max_rel": worst,
        "status": "PASS" if worst < 2e-2 else "FAIL",
    }


@section("FSDP2 driven by Ulysses Pro, world size 1, bf16 with fp32 masters")
def check_fsdp(args):
    from transformers import TrainerCallback

    seen = {}

    class Inspect(TrainerCallback):
        def on_step_end(self, args_, state, control, model=None, **kwargs):
            from torch.distributed.tensor import DTensor

            seen["dtensor_params"] = all(isinstance(p, DTensor) for p in model.parameters())
            seen["master_dtypes"] = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})

    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    device = {"use_cpu": True, "max_steps": 2} if args.cpu_dry_run else {}
    plain = _train({"bf16": True, **device})
    base = dict(
        model_name_or_path="tiny:llama?hidden_size=256&num_layers=4&num_heads=8&num_kv_heads=2",
        stage="sft", do_train=True, finetuning_type="full", dataset="demo_chat", dataset_dir=str(ROOT / "data"),
        cutoff_len=256, max_samples=32, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        max_grad_norm=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        overwrite_output_dir=True, output_dir=tempfile.mkdtemp(prefix="gpu-check-fsdp-"),
    )  # fmt: skip
    keys = {"bf16": True, "fsdp": "full_shard", **device}
    trainer = run_stage(load_config({**base, **keys}), callbacks=[Inspect()])
    fsdp = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    worst = max(abs(a - b) / abs(b) for a, b in zip(fsdp, plain))
    ok = trainer.sharded_by_fsdp2 and seen.get("dtensor_params") and seen.get("master_dtypes") == ["torch.float32"]
    return {
        "sharded_by_fsdp2": trainer.sharded_by_fsdp2,
        **seen,
        "losses": fsdp,
        "max_rel_vs_plain": worst,
        "status": "PASS" if ok and worst < 2e-2 else "FAIL",
    }


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
    device = _device(args)
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


START = time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="stop starting new scan points after this"
    )
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy sizes on the CPU, to test the script")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    for check in (
        check_environment,
        check_kernels,
        check_local_attention,
        check_sft,
        check_fsdp,
        check_memory_scan,
    ):
        check(args)
    print("\nsummary: " + ", ".join(f"{name}: {r['status']}" for name, r in RESULTS.items()))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0 if all(r["status"] != "FAIL" for r in RESULTS.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

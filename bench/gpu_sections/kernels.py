"""The environment, and every kernel call kind in bf16 and fp32 against an fp64 reference (forward and
the two-block ring backward), with the flash kernels the ones bf16 used."""

from __future__ import annotations

import torch

from .common import device_of, max_rel, section


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

    device = device_of(args)
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
            errors = [max_rel(final, joint), max_rel(grads_a[0] + grads_b[0], want_a[0] + want_b[0])]
            errors += [
                max_rel(g, w) for g, w in zip([*grads_a[1:], *grads_b[1:]], [*want_a[1:], *want_b[1:]])
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

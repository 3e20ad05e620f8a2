"""Attention kernels: every backend against textbook attention, forward and the blockwise backward.

The CUDA backends cannot run here, so they are proven two ways: the flash-attn package through
stand-ins that mimic each release's convention (2.6's tuple window and 8 outputs; 2.7/2.8's split
window, in-place gradients and `torch.library.custom_op` wrapping), and PyTorch's own flash kernels
on fake CUDA tensors (`FakeTensorMode`), which check shapes, dtypes and devices against the real
ops' meta functions and fail on any data-dependent (host-syncing) call.
"""

from __future__ import annotations

import logging
import types

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ulysses_pro.parallel import kernels, ring
from ulysses_pro.parallel.kernels import Sequences, block_backward, block_forward, cuda, reference
from ulysses_pro.parallel.plan import build_plan

HEADS, KV_HEADS, DIM = 4, 2, 8


def _textbook(q, k, v, allowed, scale):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0) @ v, lse


def _inputs(batch, rows, keys, dtype=torch.float64, seed=3):
    generator = torch.Generator().manual_seed(seed)

    def draw(heads, n):
        return torch.randn(batch, heads, n, DIM, generator=generator, dtype=dtype)

    return draw(HEADS, rows), draw(KV_HEADS, keys), draw(KV_HEADS, keys), draw(HEADS, rows)


def _allowed(sequences: Sequences, causal: bool, batch: int, rows: int, keys: int) -> torch.Tensor:
    allowed = torch.zeros(batch, 1, rows, keys, dtype=torch.bool)
    for row, qs, ks in sequences.problems(rows, keys):
        block = torch.ones(qs.stop - qs.start, ks.stop - ks.start, dtype=torch.bool)
        allowed[row, 0, qs, ks] = block.tril() if causal else block
    return allowed


def _calls(batch, length):
    """(causal, sequences) of the call kinds the plan makes: uniform causal, uniform full, varlen."""
    cpu = torch.device("cpu")
    varlen = [0, 3, 7, length, length + 5, 2 * length]  # row 0: 3 documents, row 1: 2
    return {
        "causal": (True, Sequences.rows(batch, length, length, cpu)),
        "full": (False, Sequences.rows(batch, length, length, cpu)),
        "varlen": (True, Sequences.build(varlen, varlen, uniform=False, device=cpu)),
    }


@pytest.mark.parametrize("kind", ["causal", "full", "varlen"])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_block_kernels_match_textbook_attention(kind, backend, monkeypatch):
    """Forward equals textbook attention; two key blocks merged by lse then back-propagated one by one
    with the final (out, lse) give exactly the gradient of attention over both blocks (GQA 4/2).
    Varlen calls run document by document."""
    monkeypatch.setattr(reference, "QUERY_TILE", 4)
    backend = reference.REFERENCE if backend == "reference" else reference.CPU_FLASH
    batch, length = 2, 11
    causal, sequences = _calls(batch, length)[kind]
    q, k, v, grad = _inputs(batch, length, length)
    allowed = _allowed(sequences, causal, batch, length, length)
    out, lse = backend.forward(q, k, v, 0.3, causal, sequences)
    want_out, want_lse = _textbook(q, k, v, allowed, 0.3)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)

    # A second, fully visible key block (as in a ring): merge, then each block's backward.
    _, k2, v2, _ = _inputs(batch, length, 5, seed=9)
    every = sequences_all = Sequences.rows(batch, length, 5, torch.device("cpu"))
    out2, lse2 = backend.forward(q, k2, v2, 0.3, False, every)
    final_lse = torch.logaddexp(lse, lse2)
    final = out * torch.exp(lse - final_lse)[..., None] + out2 * torch.exp(lse2 - final_lse)[..., None]
    grads_a = backend.backward(grad, q, k, v, final, final_lse, 0.3, causal, sequences)
    grads_b = backend.backward(grad, q, k2, v2, final, final_lse, 0.3, False, sequences_all)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, k2, v2)]
    both = torch.cat([allowed, torch.ones(batch, 1, length, 5, dtype=torch.bool)], dim=-1)
    joint, _ = _textbook(leaves[0], torch.cat(leaves[1::2], 2), torch.cat(leaves[2::2], 2), both, 0.3)
    (joint * grad).sum().backward()
    torch.testing.assert_close(grads_a[0] + grads_b[0], leaves[0].grad, rtol=1e-10, atol=1e-10)
    for got, leaf in zip([*grads_a[1:], *grads_b[1:]], leaves[1:]):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-10)


def test_half_precision_blocks_accumulate_in_fp32():
    q, k, v, _ = _inputs(1, 8, 8, dtype=torch.bfloat16)
    sequences = Sequences.rows(1, 8, 8, torch.device("cpu"))
    out, lse = block_forward(q, k, v, 0.3, True, sequences)
    assert out.dtype == lse.dtype == torch.float32
    allowed = torch.ones(8, 8, dtype=torch.bool).tril()
    want, _ = _textbook(q.double(), k.double(), v.double(), allowed, 0.3)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=2e-2)


# ---------------------------------------------------------------------------------------------
# flash-attn stand-ins: each mimics one release's documented convention and computes with the
# reference kernels on (total, heads, dim) CPU tensors.


def _problems_from(cu_q, cu_k):
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    return Sequences.build(bounds_q, bounds_k, uniform=False, device=torch.device("cpu"))


def _varlen_forward(q, k, v, cu_q, cu_k, scale, causal):
    """(total, h, d) varlen -> (out (total, h, d), lse (h, total)) with flash's +inf for empty rows."""
    out, lse = reference.REFERENCE.forward(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        scale,
        causal,
        _problems_from(cu_q, cu_k),
    )
    lse = lse[0].masked_fill(torch.isneginf(lse[0]), float("inf"))
    return out[0].transpose(0, 1).to(q.dtype).contiguous(), lse.float()


def _varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, scale, causal):
    grads = reference.REFERENCE.backward(
        *(t.transpose(0, 1)[None] for t in (dout, q, k, v, out)),
        lse[None],
        scale,
        causal,
        _problems_from(cu_q, cu_k),
    )
    return [g[0].transpose(0, 1) for g in grads]


def _stand_in_2_6():
    calls = []

    def _flash_attn_varlen_forward(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
        window_size=(-1, -1), softcap=0.0, alibi_slopes=None, return_softmax=False, block_table=None,
    ):  # fmt: skip
        assert window_size == (-1, -1) and softcap == 0.0 and dropout_p == 0.0 and not return_softmax
        calls.append(("forward", max_seqlen_q, max_seqlen_k))
        out, lse = _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
        return out, q, k, v, out, lse, None, None

    def _flash_attn_varlen_backward(
        dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, rng_state=None,
    ):  # fmt: skip
        assert window_size == (-1, -1)
        calls.append(("backward", max_seqlen_q, max_seqlen_k))
        grads = _varlen_backward(
            dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal
        )
        for target, grad in zip((dq, dk, dv), grads):
            target.copy_(grad)  # 2.6 writes the buffers it is given and returns them
        return dq, dk, dv, None

    return types.SimpleNamespace(
        _flash_attn_varlen_forward=_flash_attn_varlen_forward,
        _flash_attn_varlen_backward=_flash_attn_varlen_backward,
    ), calls


_CUSTOM_OPS = {}


def _stand_in_2_7():
    """2.7/2.8: custom ops (signature `(*args, **kwargs)`), split window, gradients filled in place."""
    if not _CUSTOM_OPS:

        @torch.library.custom_op("ulysses_test::flash_fwd", mutates_args=(), device_types="cpu")
        def forward(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
            cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float,
            softmax_scale: float, causal: bool, window_size_left: int = -1, window_size_right: int = -1,
            softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None, return_softmax: bool = False,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
            assert (window_size_left, window_size_right, softcap) == (-1, -1, 0.0)
            out, lse = _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
            return out, lse, torch.empty(0), torch.empty(2, dtype=torch.int64)

        @torch.library.custom_op(
            "ulysses_test::flash_bwd", mutates_args=("dq", "dk", "dv"), device_types="cpu"
        )
        def backward(
            dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            softmax_lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
            cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
            dropout_p: float, softmax_scale: float, causal: bool, window_size_left: int,
            window_size_right: int, softcap: float, alibi_slopes: torch.Tensor | None, deterministic: bool,
            rng_state: torch.Tensor | None = None,
        ) -> torch.Tensor:  # fmt: skip
            grads = _varlen_backward(
                dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal
            )
            for target, grad in zip((dq, dk, dv), grads):
                target.copy_(grad)
            return torch.empty(0)

        _CUSTOM_OPS.update(forward=forward, backward=backward)
    return types.SimpleNamespace(
        _flash_attn_varlen_forward=_CUSTOM_OPS["forward"], _flash_attn_varlen_backward=_CUSTOM_OPS["backward"]
    )


@pytest.mark.parametrize("version", ["2.6.3", "2.7.4.post1", "2.8.3"])
@pytest.mark.parametrize("kind", ["causal", "varlen"])
def test_flash_attn_conventions_reproduce_the_reference(version, kind):
    interface = _stand_in_2_6()[0] if version.startswith("2.6") else _stand_in_2_7()
    if not version.startswith("2.6"):
        # What defeated a signature probe: the custom op hides its parameters.
        import inspect

        assert "window_size_left" not in inspect.signature(interface._flash_attn_varlen_forward).parameters
    backend = cuda.FlashAttnPackage(interface, version)
    assert backend.split_window == (not version.startswith("2.6"))
    batch, length = 2, 11
    causal, sequences = _calls(batch, length)[kind]
    q, k, v, grad = _inputs(batch, length, length, dtype=torch.float32)
    out, lse = backend.forward(q, k, v, 0.3, causal, sequences)
    want_out, want_lse = reference.REFERENCE.forward(q, k, v, 0.3, causal, sequences)
    torch.testing.assert_close(out, want_out.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, want_lse.float(), rtol=1e-5, atol=1e-6)
    got = backend.backward(grad, q, k, v, out, lse, 0.3, causal, sequences)
    want = reference.REFERENCE.backward(grad, q, k, v, want_out, want_lse, 0.3, causal, sequences)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-5)


def test_flash_attn_release_detection(monkeypatch):
    """Installed releases map to their convention; one older than 2.6 is not used."""
    for version, usable in [("2.5.9", False), ("2.6.3", True), ("2.8.3", True)]:
        package = types.ModuleType("flash_attn")
        package.__version__ = version
        interface = types.ModuleType("flash_attn.flash_attn_interface")
        monkeypatch.setitem(__import__("sys").modules, "flash_attn", package)
        monkeypatch.setitem(__import__("sys").modules, "flash_attn.flash_attn_interface", interface)
        monkeypatch.setattr(cuda.importlib.util, "find_spec", lambda name: object())
        cuda.flash_attn_package.cache_clear()
        found = cuda.flash_attn_package()
        assert (found is not None) == usable, version
        if found is not None:
            assert found.interface is interface and found.split_window == (version >= "2.7")
    cuda.flash_attn_package.cache_clear()


# ---------------------------------------------------------------------------------------------
# PyTorch's own CUDA flash kernels on fake CUDA tensors


def test_cuda_dispatch_prefers_flash_kernels(monkeypatch):
    """bf16/fp16 on CUDA: the flash-attn package when installed, else torch's flash; fp32: reference."""
    monkeypatch.setattr(cuda, "aten_flash_supported", lambda index: True)
    monkeypatch.setattr(cuda, "ampere_or_newer", lambda index: True)
    monkeypatch.setattr(cuda, "flash_attn_package", lambda: None)
    with FakeTensorMode():
        bf16 = torch.empty(1, HEADS, 16, 64, device="cuda", dtype=torch.bfloat16)
        fp32 = torch.empty(1, HEADS, 16, 64, device="cuda", dtype=torch.float32)
        assert kernels.select_backend(bf16) is cuda.ATEN_FLASH
        assert kernels.select_backend(fp32) is reference.REFERENCE
        package = cuda.FlashAttnPackage(types.SimpleNamespace(), "2.8.3")
        monkeypatch.setattr(cuda, "flash_attn_package", lambda: package)
        assert kernels.select_backend(bf16) is package
    assert kernels.select_backend(torch.empty(1, HEADS, 16, 64)) is reference.CPU_FLASH


def test_the_reference_kernel_on_cuda_is_named_with_its_reason_once(monkeypatch, caplog):
    """fp32 on CUDA is correct on the tiled reference but slow: one warning per path says why."""
    monkeypatch.setattr(cuda, "ampere_or_newer", lambda index: True)
    monkeypatch.setattr(kernels, "_LOGGED", set())
    with FakeTensorMode(), caplog.at_level(logging.INFO, logger="ulysses_pro.parallel.kernels"):
        fp32 = torch.empty(1, HEADS, 16, 64, device="cuda", dtype=torch.float32)
        for _ in range(2):
            kernels._record("some path", kernels.select_backend(fp32), fp32)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "some path: the tiled reference kernel runs on CUDA "
        "(float32 inputs: the flash kernels take fp16/bf16 (train with bf16: true))"
    ]


def test_flash_kernels_are_not_chosen_before_ampere(monkeypatch):
    """A T4 / V100 (sm75 / sm70): neither FlashAttention-2 build has kernels for it, installed or not."""
    package = cuda.FlashAttnPackage(types.SimpleNamespace(), "2.8.3")
    monkeypatch.setattr(cuda, "flash_attn_package", lambda: package)
    monkeypatch.setattr(cuda, "aten_flash_supported", lambda index: True)
    monkeypatch.setattr(cuda, "ampere_or_newer", lambda index: False)
    with FakeTensorMode():
        bf16 = torch.empty(1, HEADS, 16, 64, device="cuda", dtype=torch.bfloat16)
        assert kernels.select_backend(bf16) is reference.REFERENCE


@pytest.mark.parametrize("deterministic", [False, True])
def test_the_flash_attn_backward_is_told_whether_determinism_is_on(deterministic):
    """`full_determinism` / torch.use_deterministic_algorithms reach flash-attn's backward (ATen's
    flash backward reads the same switch itself)."""
    interface, _ = _stand_in_2_6()
    seen = []
    backward = interface._flash_attn_varlen_backward

    def recording(*args, **kwargs):
        seen.append(args[19])  # `deterministic`, positional in every release
        return backward(*args, **kwargs)

    interface._flash_attn_varlen_backward = recording
    backend = cuda.FlashAttnPackage(interface, "2.6.3")
    causal, sequences = _calls(1, 8)["causal"]
    q, k, v, grad = _inputs(1, 8, 8, dtype=torch.float32)
    out, lse = backend.forward(q, k, v, 0.3, causal, sequences)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        backend.backward(grad, q, k, v, out, lse, 0.3, causal, sequences)
    finally:
        torch.use_deterministic_algorithms(was)
    assert seen == [deterministic]


@pytest.mark.parametrize("ring_size", [1, 2])
def test_torch_flash_path_on_fake_cuda_tensors(ring_size, monkeypatch, caplog):
    """Every piece of a packed plan runs torch's varlen flash ops with device-true, correctly shaped
    arguments (the ops' meta functions check them) and no host sync (fake tensors refuse one)."""
    monkeypatch.setattr(cuda, "aten_flash_supported", lambda index: True)
    monkeypatch.setattr(cuda, "ampere_or_newer", lambda index: True)
    monkeypatch.setattr(cuda, "flash_attn_package", lambda: None)
    monkeypatch.setattr(kernels, "_LOGGED", set())
    length = 32
    starts = [[0, 5, 20], [0, 13]]  # two packed rows
    with FakeTensorMode():
        plan = build_plan(starts, length, ring_size, ring_size - 1, torch.device("cuda"))
        local = plan.length
        q = torch.empty(2, local, HEADS, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        k = torch.empty(2, local, KV_HEADS, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        with caplog.at_level(logging.INFO, logger="ulysses_pro.parallel.kernels"):
            # Step 0 is this rank's own block (no communication needed); twice, as two layers would.
            for piece in [*plan.steps[0], *plan.steps[0]]:
                args = ring._piece_inputs(piece, q, k, k)
                out, lse = block_forward(*args, 0.125, piece.causal, piece.sequences, path="test path")
                assert (
                    out.shape == args[0].shape and out.device.type == "cuda" and out.dtype == torch.bfloat16
                )
                assert lse.shape == args[0].shape[:-1] and lse.dtype == torch.float32
                dq, dk, dv = block_backward(out, *args, out, lse, 0.125, piece.causal, piece.sequences)
                assert dq.shape == args[0].shape and dk.shape == dv.shape == args[1].shape
    assert kernels.kernels_used()["test path"] == cuda.ATEN_FLASH.name
    # Logged once per run, however many pieces and calls.
    assert [r.getMessage() for r in caplog.records].count(f"test path: {cuda.ATEN_FLASH.name}") == 1

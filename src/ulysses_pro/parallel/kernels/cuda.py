"""CUDA flash kernels: PyTorch's own (every CUDA build has them) and the flash-attn package.

Every CUDA call is a varlen call on (total tokens, heads, head_dim) views: one kernel launch covers
every document of every row, and the cu_seqlens come from the per-forward plan. Both kernels take
fewer KV heads than query heads natively (GQA), return the log-sum-exp the ring merge needs, and
have a backward that accepts the *final* output and log-sum-exp (FlashAttention-2, Dao 2023).

flash-attn's raw forward/backward are not a stable API, so each release's documented convention is
called as written in that release (`flash_attn_interface.py`):
- 2.6.x: `window_size=(left, right)` tuple; forward returns 8 values (out, q, k, v, out_padded,
  softmax_lse, S_dmask, rng_state); backward returns (dq, dk, dv, softmax_d).
- 2.7 / 2.8: `window_size_left`, `window_size_right` ints; the functions are
  `torch.library.custom_op`s (their `inspect.signature` reads `(*args, **kwargs)`); forward returns
  (out, softmax_lse, S_dmask, rng_state); backward fills dq, dk, dv in place.
Arguments are passed positionally in each release's order. A release older than 2.6 is not used.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import re

import torch

from .varlen import Sequences

logger = logging.getLogger(__name__)

HALF_TYPES = (torch.float16, torch.bfloat16)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(b, h, s, d) -> (b*s, h, d); a view when the memory is (b, s, h, d) contiguous."""
    b, h, s, d = x.shape
    flat = x.transpose(1, 2).reshape(b * s, h, d)
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def _unflat(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(b*s, h, d) -> (b, h, s, d) view."""
    total, h, d = x.shape
    return x.view(batch, total // batch, h, d).transpose(1, 2)


def _lse_flat(lse: torch.Tensor) -> torch.Tensor:
    """(b, h, s) -> (h, b*s) contiguous fp32, the varlen kernels' log-sum-exp layout."""
    b, h, s = lse.shape
    return lse.float().transpose(0, 1).reshape(h, b * s).contiguous()


def _lse_unflat(lse: torch.Tensor, batch: int) -> torch.Tensor:
    """(h, b*s) -> (b, h, s); flash kernels write +inf for a row that sees no key, the merge wants -inf."""
    h, total = lse.shape
    lse = lse.view(h, batch, total // batch).transpose(0, 1)
    return lse.masked_fill(lse == float("inf"), float("-inf"))


# ---------------------------------------------------------------------------------------------
# PyTorch's own flash kernels


@functools.cache
def aten_flash_takes_windows() -> bool:
    """Whether this torch's `_flash_attention_forward` takes window sizes (schema, not version)."""
    schema = torch.ops.aten._flash_attention_forward.default._schema
    return "window_size_left" in {argument.name for argument in schema.arguments}


def window_sides(causal: bool, window: int) -> tuple[int, int]:
    """(left, right) window of a call in flash-attention's convention: -1 is unlimited, causal is right 0."""
    return window, 0 if causal else -1


class AtenFlash:
    """`aten::_flash_attention_forward/_backward` (what `torch.nn.attention.varlen` calls)."""

    name = "torch CUDA flash (aten._flash_attention_forward, varlen)"

    def _window(self, causal: bool, window: int) -> dict:
        if not aten_flash_takes_windows():
            return {}  # select_backend never sends a windowed call here then
        left, right = window_sides(causal, window) if window >= 0 else (-1, -1)
        return {"window_size_left": left, "window_size_right": right}

    def forward(self, q, k, v, scale: float, causal: bool, sequences: Sequences, window=-1, softcap=0.0):
        batch = q.shape[0]
        out, lse, *_ = torch.ops.aten._flash_attention_forward(
            _flat(q),
            _flat(k),
            _flat(v),
            sequences.cu_q,
            sequences.cu_k,
            sequences.max_q,
            sequences.max_k,
            0.0,
            causal,
            False,
            scale=scale,
            **self._window(causal, window),
        )
        return _unflat(out, batch), _lse_unflat(lse, batch)

    def backward(
        self,
        grad_out,
        q,
        k,
        v,
        out,
        lse,
        scale: float,
        causal: bool,
        sequences: Sequences,
        window=-1,
        softcap=0.0,
    ):
        batch = q.shape[0]
        # Dropout is off, so the kernel never reads the RNG state (torch's own varlen wrapper does this).
        rng_state = torch.zeros(2, dtype=torch.uint64, device=q.device)
        unused = torch.empty(0, device=q.device)
        grad_q, grad_k, grad_v = torch.ops.aten._flash_attention_backward(
            _flat(grad_out.to(q.dtype)),
            _flat(q),
            _flat(k),
            _flat(v),
            _flat(out.to(q.dtype)),
            _lse_flat(lse),
            sequences.cu_q,
            sequences.cu_k,
            sequences.max_q,
            sequences.max_k,
            0.0,
            causal,
            rng_state,
            unused,
            scale=scale,
            **self._window(causal, window),
        )
        return _unflat(grad_q, batch), _unflat(grad_k, batch), _unflat(grad_v, batch)


ATEN_FLASH = AtenFlash()


@functools.cache
def ampere_or_newer(device_index: int) -> bool:
    """FlashAttention-2 kernels (PyTorch's and the flash-attn package's) need sm80 or newer."""
    return torch.cuda.get_device_capability(device_index) >= (8, 0)


@functools.cache
def aten_flash_supported(device_index: int) -> bool:
    """PyTorch's flash kernels run on Ampere (sm80) and newer, in builds compiled with them."""
    if not torch.backends.cuda.is_flash_attention_available():
        return False
    return ampere_or_newer(device_index)


# ---------------------------------------------------------------------------------------------
# The flash-attn package (optional)


def parse_version(text: str) -> tuple[int, int]:
    """'2.7.4.post1' -> (2, 7)."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if not match:
        raise ValueError(f"unreadable flash-attn version {text!r}")
    return int(match.group(1)), int(match.group(2))


class FlashAttnPackage:
    """flash-attn's `_flash_attn_varlen_forward/_backward`, called with its release's convention."""

    def __init__(self, interface, version: str):
        self.interface, self.version = interface, version
        self.split_window = parse_version(version) >= (2, 7)
        convention = "window_size_left/right, custom_op" if self.split_window else "window_size tuple"
        self.name = f"flash-attn {version} (_flash_attn_varlen_forward, {convention})"

    def _window(self, causal: bool, window: int) -> tuple:
        sides = window_sides(causal, window) if window >= 0 else (-1, -1)
        return sides if self.split_window else (sides,)

    def forward(self, q, k, v, scale: float, causal: bool, sequences: Sequences, window=-1, softcap=0.0):
        batch = q.shape[0]
        result = self.interface._flash_attn_varlen_forward(
            _flat(q),
            _flat(k),
            _flat(v),
            sequences.cu_q,
            sequences.cu_k,
            sequences.max_q,
            sequences.max_k,
            0.0,  # dropout_p
            scale,
            causal,
            *self._window(causal, window),
            float(softcap),
            None,  # alibi_slopes
            False,  # return_softmax
        )
        # 2.6: (out, q, k, v, out_padded, softmax_lse, S_dmask, rng_state); 2.7+: (out, softmax_lse, S_dmask, rng_state)
        out, lse = (result[0], result[1]) if self.split_window else (result[0], result[5])
        return _unflat(out, batch), _lse_unflat(lse, batch)

    def backward(
        self,
        grad_out,
        q,
        k,
        v,
        out,
        lse,
        scale: float,
        causal: bool,
        sequences: Sequences,
        window=-1,
        softcap=0.0,
    ):
        batch = q.shape[0]
        q_flat, k_flat, v_flat = _flat(q), _flat(k), _flat(v)
        grad_q, grad_k, grad_v = (torch.empty_like(x) for x in (q_flat, k_flat, v_flat))
        result = self.interface._flash_attn_varlen_backward(
            _flat(grad_out.to(q.dtype)),
            q_flat,
            k_flat,
            v_flat,
            _flat(out.to(q.dtype)),
            _lse_flat(lse),
            grad_q,
            grad_k,
            grad_v,
            sequences.cu_q,
            sequences.cu_k,
            sequences.max_q,
            sequences.max_k,
            0.0,  # dropout_p
            scale,
            causal,
            *self._window(causal, window),
            float(softcap),
            None,  # alibi_slopes
            # `full_determinism` / torch.use_deterministic_algorithms: ATen's flash backward reads
            # the same switch itself; flash-attn is told.
            torch.are_deterministic_algorithms_enabled(),
            None,  # rng_state
        )
        if not self.split_window:
            grad_q, grad_k, grad_v = result[:3]  # 2.6 returns (dq, dk, dv, softmax_d); 2.7+ only fills them
        return _unflat(grad_q, batch), _unflat(grad_k, batch), _unflat(grad_v, batch)


@functools.cache
def flash_attn_package() -> FlashAttnPackage | None:
    """The installed flash-attn (>= 2.6) behind its documented convention, or None."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        package = importlib.import_module("flash_attn")
        interface = importlib.import_module("flash_attn.flash_attn_interface")
        version = str(getattr(package, "__version__", "0.0"))
        if parse_version(version) < (2, 6):
            logger.warning(
                "flash-attn %s predates 2.6 (no softcap argument); using PyTorch's flash kernels", version
            )
            return None
        if parse_version(version) >= (2, 9):
            logger.warning(
                "flash-attn %s is newer than the 2.8 convention this was written for; trying it", version
            )
        return FlashAttnPackage(interface, version)
    except (ImportError, ValueError, AttributeError) as error:
        logger.warning("flash-attn is installed but unusable (%s); using PyTorch's flash kernels", error)
        return None

"""Run the real SP attention path on meta tensors, on one process: collectives and kernels simulated.

The planner wires the model with the real `apply_sequence_parallel` (plan, ulysses all-to-all,
ring, autograd functions), so every buffer that path allocates is allocated with its real shape,
dtype and lifetime. Only three things are replaced, inside `simulated_sequence_parallel()`:
- collectives (all-to-all, all-gather, ring sends/receives) do nothing: their buffers are already
  allocated by the caller;
- the kernel backend allocates what the device's kernel returns (CPU flash: accumulation dtype; CUDA
  flash: the input dtype, on (tokens, heads, dim) views) without computing;
- the attention plan is that of one document per row (documents change which pieces run, not the
  memory a long-context step needs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..parallel import comm, kernels
from ..parallel.kernels import cuda as cuda_kernels
from ..parallel.mesh import SequenceParallelLayout
from ..parallel.plan import DocumentLayout


class _Group:
    """Stands for a process group of a given size."""

    def __init__(self, size: int):
        self.size = size


def layout_for(ulysses: int, ring: int, mode: str = "hybrid") -> SequenceParallelLayout:
    """Rank 0's layout of an SP group of ulysses x ring ranks, with stand-in groups."""
    size = ulysses * ring
    return SequenceParallelLayout(
        world_size=size,
        rank=0,
        sp_size=size,
        ulysses_size=ulysses,
        ring_size=ring,
        mode=mode,
        sp_group=_Group(size),
        dp_group=_Group(1),
        ulysses_group=_Group(ulysses),
        ring_group=_Group(ring),
    )


class ShapeOnlyKernel:
    """Allocates a kernel's outputs (and the copies its wrapper makes) without computing."""

    def __init__(self, device: str):
        self.name = f"shape-only ({device} flash)"
        self.cuda = device == "cuda"

    def _acc(self, q):
        return q.dtype if self.cuda else kernels.accumulation_dtype(q)

    def forward(self, q, k, v, scale, causal, sequences, window=-1, softcap=0.0):
        batch = q.shape[0]
        if self.cuda:
            flat = [cuda_kernels._flat(x) for x in (q, k, v)]
            total, heads, _ = flat[0].shape
            out = torch.empty(flat[0].shape, dtype=q.dtype, device=q.device)
            lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
            del flat
            return cuda_kernels._unflat(out, batch), cuda_kernels._lse_unflat(lse, batch)
        converted = [x.to(self._acc(q)) for x in (q, k, v)]
        out = torch.empty(q.shape, dtype=self._acc(q), device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        del converted
        return out, lse

    def backward(self, grad_out, q, k, v, out, lse, scale, causal, sequences, window=-1, softcap=0.0):
        acc = self._acc(q)
        if self.cuda:
            kept = [cuda_kernels._flat(x.to(q.dtype)) for x in (grad_out, q, k, v, out)]
            kept.append(cuda_kernels._lse_flat(lse))
        else:
            kept = [grad_out.to(acc).contiguous(), q.to(acc), k.to(acc), v.to(acc), out.to(acc).contiguous()]
            kept.append(lse.to(acc).contiguous())
        grads = [torch.empty(x.shape, dtype=acc, device=x.device) for x in (q, k, v)]
        del kept
        return tuple(grads)


@contextlib.contextmanager
def simulated_sequence_parallel(device: str) -> Iterator[None]:
    """Collectives, kernels and the attention plan simulated for a meta-device trace."""
    from ..models import attention as model_attention
    from ..models.recurrent import documents as mixer_documents

    kernel = ShapeOnlyKernel(device)

    def one_document_per_row(position_ids, layout, batch=None):
        rows = batch or position_ids.shape[0]
        length = position_ids.shape[1] * layout.sp_size
        return DocumentLayout([[0]] * rows, length, position_ids.device)

    patches = [
        (comm.dist, "all_to_all_single", lambda output, input, group=None: None),
        (comm.dist, "all_gather", lambda outputs, tensor, group=None: None),
        (comm.dist, "batch_isend_irecv", lambda ops: []),
        (comm.dist, "P2POp", lambda op, tensor, peer, group=None: None),
        (comm.dist, "get_world_size", lambda group=None: group.size if isinstance(group, _Group) else 1),
        (comm.dist, "is_initialized", lambda: True),
        (kernels, "select_backend", lambda q, *_: kernel),
        (model_attention, "gather_documents", one_document_per_row),
        # Attention plans and recurrent mixers read the documents from the forward's context.
        (mixer_documents, "document_starts", lambda positions: [[0]] * positions.shape[0]),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)

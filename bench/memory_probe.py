"""Memory readings shared by the bench scripts (CPU RSS, live tensor bytes, CUDA allocator).

- RSS: `/proc/self/status` VmRSS / VmHWM; the high-water mark is reset through
  `/proc/self/clear_refs`. `pin_malloc()` (call before starting worker processes) makes glibc serve
  large allocations with mmap, so freed tensors leave the resident set and the high-water mark
  tracks live tensors rather than heap fragmentation.
- Live tensor bytes: `LiveTensorBytes`, a dispatch mode that adds every new tensor storage an op
  creates (forward, backward and optimizer alike) and subtracts it when the storage is freed; its
  peak is what a GPU caching allocator reports as `max_memory_allocated`, measured on the CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

MIB = 2**20


def pin_malloc(threshold: int = 1 << 16) -> None:
    """For processes started after this call: glibc mmaps allocations above `threshold` bytes."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(threshold))


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_rss_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def rss_peak_mib() -> float:
    return rss_kib("VmHWM") / 1024


def summed_loss_step(model, head, batch: dict) -> None:
    """One training forward + backward the way the trainer runs token stages (the summed tiled loss
    head over the batch's pre-shifted labels)."""
    from ulysses_pro.models.memory import token_loss_head

    with token_loss_head(model, batch["shift_labels"], head_options=head, reduction="sum"):
        loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    loss.backward()


def second_step_peak():
    """A Trainer callback whose `peak_mib` is the resident-set high-water mark of optimizer step 2
    (weights, optimizer state and that step's activations; step 1's one-off allocations excluded)."""
    from transformers import TrainerCallback

    class SecondStepPeak(TrainerCallback):
        peak_mib = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                reset_rss_peak()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                self.peak_mib = rss_peak_mib()

    return SecondStepPeak()


# The live-tensor counter is the planner's own instrument; the benches measure with the same one.
from ulysses_pro.planner.tensor_bytes import LiveTensorBytes, storage_bytes  # noqa: E402,F401

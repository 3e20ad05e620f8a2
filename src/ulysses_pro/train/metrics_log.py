"""`output_dir/trainer_log.jsonl`: one JSON line per log event, written while the run trains.

trainer_state.json exists only at checkpoints, so a watcher (the web board, `tail -f`) could not
follow a run between them. LLaMA-Factory writes a file of this name for its board; ours holds the
Trainer's log dict as it is (loss, eval_loss, reward, learning_rate, ...) plus the run's progress
(step, total_steps, percentage, elapsed_s, remaining_s), the throughput (tokens_per_s and
total_tokens, when `include_num_input_tokens_seen` counts tokens) and every rank's peak memory.
Only the world's rank 0 writes.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

LOG_FILE = "trainer_log.jsonl"


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(this process's peak, what was measured): CUDA's allocator peak, else the host's peak RSS."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device), "cuda allocated"
    # ru_maxrss is KiB on Linux (bytes on macOS, where this is only ever a rough number anyway)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host rss"


class MetricsLog(TrainerCallback):
    """Appends each log event to `trainer_log.jsonl`; a fresh run starts the file anew, a resumed
    one keeps the lines up to the step it resumes from."""

    def __init__(self) -> None:
        self.started = 0.0
        self.first_step = 0
        self.first_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self.first_step = state.global_step
        self.first_tokens = state.num_input_tokens_seen or 0
        if state.is_world_process_zero:
            path = Path(args.output_dir) / LOG_FILE
            kept = [line for line in _lines(path) if line.get("step", 0) <= state.global_step]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(line) + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer.log runs on every rank (its loss gather is already a collective), so the peaks
        # can be gathered here; rank 0 alone writes.
        peaks, kind = self._peaks(args.device)
        if not state.is_world_process_zero:
            return
        elapsed = time.time() - self.started
        done = state.global_step - self.first_step
        total = state.max_steps or 0
        record = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float, str, bool))}
        record.update(
            step=state.global_step,
            total_steps=total,
            percentage=round(100 * state.global_step / total, 2) if total else None,
            elapsed_s=round(elapsed, 2),
            remaining_s=round(elapsed / done * (total - state.global_step), 1) if done and total else None,
            peak_memory_gib=[round(p / 2**30, 4) for p in peaks],
            memory=kind,
            time=time.time(),
        )
        tokens = (state.num_input_tokens_seen or 0) - self.first_tokens
        if tokens > 0 and elapsed > 0:
            record.update(total_tokens=state.num_input_tokens_seen, tokens_per_s=round(tokens / elapsed, 1))
        with open(Path(args.output_dir) / LOG_FILE, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")

    @staticmethod
    def _peaks(device: torch.device) -> tuple[list[int], str]:
        peak, kind = peak_memory_bytes(device)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return [peak], kind
        mine = torch.tensor([float(peak)], dtype=torch.float64, device=device)
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        return [int(t.item()) for t in every], kind


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a killed run
    return out


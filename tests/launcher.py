"""The one launcher every multi-rank test uses: N gloo processes on localhost.

`run_ranks(fn, world_size, *args)` runs `fn(rank, world_size, *args)` in fresh spawned processes
with a process group already initialised, and returns each rank's return value (rank order).
`fn` must be importable (module level); its return value must be picklable.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, out_dir: str, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    # Oversubscribed OpenMP threads spin against each other and slow CPU runs by orders of magnitude.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = ("ok", fn(rank, world_size, *args))
    except BaseException:  # report every failure, including assertion errors, to the parent
        result = ("error", traceback.format_exc())
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(fn, world_size: int, *args, timeout: float = 300):
    """Run `fn` on `world_size` gloo ranks and return the list of their results."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _entry,
            args=(world_size, _free_port(), out_dir, fn, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        while not context.join(timeout=timeout):
            pass
        results = []
        for rank in range(world_size):
            status, value = pickle.loads(Path(out_dir, f"rank{rank}.pkl").read_bytes())
            if status != "ok":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            results.append(value)
        return results

"""The one launcher every multi-rank test uses: N gloo processes on localhost.

`run_ranks(fn, world_size, *args)` runs `fn(rank, world_size, *args)` in fresh spawned processes
with a process group already initialised, and returns each rank's return value (rank order).
`fn` must be importable (module level); its return value must be picklable.
"""

from __future__ import annotations

import gc
import os
import pickle
import socket
import sys
import tempfile
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, out_dir: str, fn, args, backend: str = "gloo") -> None:
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
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result = ("ok", fn(rank, world_size, *args))
    except BaseException:  # report every failure, including assertion errors, to the parent
        result = ("error", traceback.format_exc())
    # The result is saved before teardown: an abort inside gloo's teardown must not lose it.
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    try:
        # No rank closes its sockets while a peer still talks to it; bounded, so that a rank
        # whose peer failed mid-collective does not wait for gloo's 30-minute default.
        dist.monitored_barrier(timeout=timedelta(seconds=60))
    except Exception:
        pass
    try:
        dist.destroy_process_group()
    except Exception:
        pass
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    # Process groups kept alive by reference cycles (models hold their SP layout) would
    # otherwise be destroyed during interpreter shutdown, where gloo's worker threads can call
    # std::terminate ("terminate called without an active exception"): skip that shutdown.
    os._exit(0)


def run_ranks(fn, world_size: int, *args, timeout: float = 300, backend: str = "gloo"):
    """Run `fn` on `world_size` gloo ranks and return the list of their results. `backend="nccl"`
    (benches on a machine with one GPU per rank): rank r uses GPU r; gloo cannot send CUDA tensors."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _entry,
            args=(world_size, _free_port(), out_dir, fn, args, backend),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        try:
            while not context.join(timeout=timeout):
                pass
        except mp.ProcessExitedException as exited:
            # A rank that died after saving its result died in teardown, which is not what the
            # test measures; one that died before saving it is a failure.
            if not all(Path(out_dir, f"rank{rank}.pkl").exists() for rank in range(world_size)):
                raise
            warnings.warn(f"a rank crashed in teardown after reporting: {exited}", stacklevel=2)
        results = []
        for rank in range(world_size):
            status, value = pickle.loads(Path(out_dir, f"rank{rank}.pkl").read_bytes())
            if status != "ok":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            results.append(value)
        return results

"""The multi-process relaunch: workers under torch's elastic agent, run in this process, and one
line at the end when they fail.

torchrun's own entry point prints a `ChildFailedError` traceback of 40 lines that buries the one
line a user needs. Here the agent runs in-process; each worker leaves its one-line error in a
folder shared with the launcher (`report_failure`), and the launcher prints the line of the rank
that failed first, or names the rank a signal killed, as the last line of the job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

ERROR_DIR_ENV = "ULYSSES_PRO_ERROR_DIR"
# A worker's exit code for errors in the user's input (config, data, checkpoint): the job's too.
INPUT_ERROR_EXIT = 2


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def report_failure(message: str, *, echo: bool = True) -> None:
    """A worker's one-line error: printed by rank 0 only (with `echo`), and left for the launcher
    to print last."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder and Path(folder).is_dir():
        Path(folder, f"rank{_rank()}.txt").write_text(message.strip(), encoding="utf-8")
    if echo and _rank() == 0:
        print(message, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_arguments(nproc: int, arguments: list[str]) -> list[str]:
    """torchrun's command line for `ulysses-pro train ARGUMENTS` on this node."""
    return [
        f"--nproc_per_node={nproc}",
        f"--nnodes={os.environ.get('NNODES', '1')}",
        f"--node_rank={os.environ.get('NODE_RANK', '0')}",
        f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
        f"--master_port={os.environ.get('MASTER_PORT', str(_free_port()))}",
        "--module",
        "ulysses_pro",
        "train",
        *arguments,
    ]


def _describe(rank: int, failure) -> str:
    if failure.exitcode >= 0:
        return f"rank {rank} (local rank {failure.local_rank}) exited with code {failure.exitcode}"
    try:
        how = f"was killed by {signal.Signals(-failure.exitcode).name}"
    except ValueError:
        how = f"was killed by signal {-failure.exitcode}"
    return f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) {how}; the other ranks were stopped"


def failure_summary(failures: dict, reports: dict[int, str]) -> tuple[str, int]:
    """The job's last line and exit code from the agent's failures ({rank: ProcessFailure}) and the
    workers' own one-line reports ({rank: line}).

    The first failure is the cause. Within the same second (the agent's timestamps are whole
    seconds) a rank killed by a signal from outside comes first: its peers then fail on the broken
    connection, and the agent stops the rest with SIGTERM."""

    def order(item):
        rank, failure = item
        killed = failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM and rank not in reports
        return (failure.timestamp, not killed, rank not in reports, rank)

    rank, failure = min(failures.items(), key=order)
    code = INPUT_ERROR_EXIT if any(f.exitcode == INPUT_ERROR_EXIT for f in failures.values()) else 1
    if rank in reports:  # its own line, even when the agent stopped it before it could exit
        return reports[rank], code
    if failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM:
        return _describe(rank, failure), 1
    if reports:  # this rank left no line (it died in native code, say); another rank did
        return reports[min(reports)], code
    return _describe(rank, failure), 1


def relaunch(nproc: int, arguments: list[str]) -> int:
    """Run `ulysses-pro train ARGUMENTS` on `nproc` local workers; the job's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent's own lines (each SIGTERM it sends, its failure table) would follow ours.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="ulysses-pro-errors-") as folder:
        os.environ[ERROR_DIR_ENV] = folder
        try:
            run(parse_args(torchrun_arguments(nproc, arguments)))
        except ChildFailedError as failed:
            reports = {
                int(path.stem[len("rank") :]): path.read_text(encoding="utf-8")
                for path in Path(folder).glob("rank*.txt")
            }
            line, code = failure_summary(failed.failures, reports)
            print(line, file=sys.stderr, flush=True)
            return code
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)
    return 0

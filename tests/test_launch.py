"""The multi-process job as a user sees it: errors stop it early with one last line, and a rank
that dies or hangs ends the whole job instead of leaving the others waiting in a collective."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ulysses_pro.launch import failure_summary

from .cli_runner import processes_with, run_cli, start_cli, write_config


@dataclass
class Failure:  # the fields of torch's ProcessFailure the summary reads
    exitcode: int
    timestamp: int
    local_rank: int = 0
    pid: int = 100


def test_summary_names_the_rank_a_signal_killed_not_the_ranks_stopped_after_it():
    failures = {0: Failure(-signal.SIGTERM, 10), 1: Failure(-signal.SIGKILL, 10, local_rank=1, pid=7)}
    line, code = failure_summary(failures, {})
    assert line == "rank 1 (local rank 1, pid 7) was killed by SIGKILL; the other ranks were stopped"
    assert code == 1
    # rank 0 noticed the broken connection in the same second and said so: the kill is still the cause
    line, _ = failure_summary(
        {0: Failure(1, 10), 1: Failure(-signal.SIGKILL, 10, 1, 7)}, {0: "rank 0: RuntimeError"}
    )
    assert line.startswith("rank 1 ")


def test_summary_prints_the_first_failing_ranks_own_line_and_keeps_input_errors_at_exit_2():
    failures = {0: Failure(2, 5), 1: Failure(2, 5, local_rank=1)}
    assert failure_summary(failures, {0: "DataError: a.json:3: row 2", 1: "DataError: a.json:3: row 2"}) == (
        "DataError: a.json:3: row 2",
        2,
    )
    # a hang that ddp_timeout ended (rank 0) comes before the agent's later kill of the hung rank
    failures = {0: Failure(1, 20), 1: Failure(-signal.SIGKILL, 50, local_rank=1)}
    assert failure_summary(failures, {0: "rank 0: RuntimeError: Timed out"}) == (
        "rank 0: RuntimeError: Timed out",
        1,
    )


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_a_head_count_sequence_parallelism_cannot_split_stops_before_any_worker_starts(tmp_path):
    config = write_config(
        tmp_path,
        model_name_or_path="tiny:llama?hidden_size=72&num_heads=9&num_kv_heads=3",
        sequence_parallel_size=2,
        sequence_parallel_mode="ulysses",
    )
    result = run_cli(["-m", "ulysses_pro", "train", str(config)], {"NPROC_PER_NODE": "2"})
    assert result.returncode == 2
    last = _last_line(result.stderr)
    assert "does not divide the 9 attention heads" in last and "zigzag-ring" in last, result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    # nothing was tokenized or loaded, by the launcher or by a worker
    assert "data ready" not in result.stdout and "trainable" not in result.stdout
    assert result.stderr.count("9 attention heads") == 1


def test_an_error_inside_the_workers_is_printed_by_rank_0_and_again_as_the_last_line(tmp_path):
    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(8)]
    rows[5]["output"] = 5  # not a string: found only when the rows are read, inside the workers
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    config = write_config(tmp_path, dataset="rows", dataset_dir=str(tmp_path), sequence_parallel_size=2)
    result = run_cli(["-m", "ulysses_pro", "train", str(config)], {"NPROC_PER_NODE": "2"})
    assert result.returncode == 2, result.stderr[-3000:]
    last = _last_line(result.stderr)
    assert last.startswith("DataError: ") and "rows.json" in last and "row 5" in last, result.stderr[-3000:]
    assert result.stderr.count(last) == 2  # rank 0's line, then the launcher's; rank 1 stays quiet
    assert "ChildFailedError" not in result.stderr


def _wait_for_training(log: Path, process, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while "'loss'" not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no training step logged"
        time.sleep(0.5)


def _run_until_rank_1_is_hit(tmp_path, hit: signal.Signals, **keys):
    """Start a 2-process SP=2 run, send `hit` to rank 1 once it trains; (exit code, seconds to end,
    output)."""
    marker = uuid.uuid4().hex
    config = write_config(
        tmp_path, max_steps=100_000, save_strategy="no", plot_loss=False, sequence_parallel_size=2, **keys
    )
    log = tmp_path / "job.log"
    job = start_cli(
        ["-m", "ulysses_pro", "train", str(config)], {"NPROC_PER_NODE": "2", "JOB_MARKER": marker}, log
    )
    try:
        _wait_for_training(log, job)
        (worker,) = processes_with(JOB_MARKER=marker, RANK="1")
        hit_at = time.monotonic()
        os.kill(worker, hit)
        code = job.wait(timeout=120)
        return code, time.monotonic() - hit_at, log.read_text(errors="replace")
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for pid in processes_with(JOB_MARKER=marker):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_rank_ends_the_whole_job_with_a_line_naming_it(tmp_path):
    code, seconds, output = _run_until_rank_1_is_hit(tmp_path, signal.SIGKILL)
    assert code != 0
    assert seconds < 60, seconds
    assert "rank 1 (local rank 1" in _last_line(output) and "SIGKILL" in _last_line(output), output[-3000:]


def test_a_hung_rank_ends_the_job_after_ddp_timeout(tmp_path):
    """SIGSTOP freezes rank 1 without closing its sockets: only the collective timeout frees rank 0,
    wherever the stop lands (an SP all-to-all, or the default group's gather of the logged loss,
    whose timeout transformers leaves at 30 minutes on CPU unless the loader starts the group), and
    the agent then stops the frozen rank (its SIGTERM waits 30 s on a stopped process)."""
    code, seconds, output = _run_until_rank_1_is_hit(tmp_path, signal.SIGSTOP, ddp_timeout=10)
    assert code != 0
    assert seconds < 60, seconds
    assert "Timed out" in _last_line(output) and _last_line(output).startswith("rank 0: "), output[-3000:]


@pytest.mark.parametrize(
    ("env", "devices", "expected"),
    [
        ({}, 0, 0),  # CPU: train in this process
        ({}, 1, 0),  # one GPU: no torchrun
        ({}, 8, 8),  # LLaMA-Factory: every visible GPU
        ({"NPROC_PER_NODE": "2"}, 8, 2),  # an explicit count wins
        ({"NPROC_PER_NODE": "1"}, 8, 0),
        ({"FORCE_TORCHRUN": "1"}, 1, 1),
        ({"FORCE_TORCHRUN": "1"}, 0, 1),
        ({"RANK": "0"}, 8, 0),  # already a torchrun worker
    ],
)
def test_relaunch_decision_follows_llamafactory(monkeypatch, env, devices, expected):
    from ulysses_pro import cli

    for key in ("NPROC_PER_NODE", "FORCE_TORCHRUN", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli, "visible_device_count", lambda: devices)
    assert cli._needs_torchrun() == expected

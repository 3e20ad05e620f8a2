"""The board's run registry with stand-in training commands (small Python scripts): status after
exit, stop reaching processes in sessions of their own (as torchrun's ranks are), resume, listing."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from ulysses_pro.board import runs as runs_module
from ulysses_pro.board.runs import (
    FAILED,
    FINISHED,
    LOST,
    RECORD_FILE,
    RUNNING,
    STOPPED,
    RunRegistry,
    train_argv,
    train_env,
)

# A launcher that, like torch's elastic agent, starts its worker in a session of its own and waits.
LAUNCHER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
open(sys.argv[1], "w").write(str(worker.pid))
print("launched", sys.argv[2:], flush=True)
worker.wait()
"""


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """train_argv replaced by `python -c CODE CONFIG overrides...`; returns a setter for CODE."""
    code = {"text": "import sys; print('trained', sys.argv[1:]); sys.exit(0)"}

    def argv(config_path, overrides=None):
        return [sys.executable, "-c", code["text"], str(config_path), *(overrides or [])]

    monkeypatch.setattr(runs_module, "train_argv", argv)

    def use(text: str):
        code["text"] = text

    return use


def test_the_real_command_is_this_interpreters_ulysses_pro_train_with_nproc_in_the_environment():
    assert train_argv("/r/cfg.yaml", ["a=1"]) == [sys.executable, "-m", "ulysses_pro", "train", "/r/cfg.yaml", "a=1"]
    env = train_env(4, {"RANK": "3", "WORLD_SIZE": "8", "MASTER_PORT": "1", "PATH": "/bin"})
    assert env["NPROC_PER_NODE"] == "4" and env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(env)


def test_runs_end_finished_or_failed_with_their_output_logged_and_recorded(tmp_path, fake_training):
    registry = RunRegistry(tmp_path)
    done = registry.start({"stage": "sft", "output_dir": str(tmp_path / "a")}, nproc=2)
    _wait_for(lambda: registry.get(done.output_dir).status != RUNNING)
    assert registry.get(done.output_dir).status == FINISHED and done.returncode == 0
    assert "trained" in done.log_path.read_text() and "NPROC_PER_NODE=2" in done.config_path.read_text()
    fake_training("import sys; print('bad row', file=sys.stderr); sys.exit(2)")
    bad = registry.start({"stage": "sft", "output_dir": str(tmp_path / "b")}, nproc=1)
    _wait_for(lambda: registry.get(bad.output_dir).status != RUNNING)
    assert bad.status == FAILED and bad.returncode == 2 and "bad row" in bad.log_path.read_text()
    record = json.loads((tmp_path / "b" / RECORD_FILE).read_text())
    assert record["status"] == FAILED and record["returncode"] == 2
    # a board started later lists both, newest first
    assert [(r.name, r.status) for r in RunRegistry(tmp_path).runs()] == [("b", FAILED), ("a", FINISHED)]


def test_stop_ends_the_launcher_and_its_worker_in_another_session_then_resume_restarts_it(
    tmp_path, fake_training
):
    worker_file = tmp_path / "worker.pid"
    fake_training(LAUNCHER.replace("sys.argv[1]", repr(str(worker_file))).replace("sys.argv[2:]", "sys.argv[1:]"))
    registry = RunRegistry(tmp_path)
    run = registry.start({"output_dir": str(tmp_path / "long")}, nproc=2)
    _wait_for(worker_file.exists)
    _wait_for(lambda: worker_file.read_text().strip() != "")
    worker = int(worker_file.read_text())
    with pytest.raises(RuntimeError, match="already training"):
        registry.start({"output_dir": str(tmp_path / "long")}, nproc=2)
    with pytest.raises(RuntimeError, match="still running"):
        registry.resume(run.output_dir)
    stopped = registry.stop(run.output_dir, grace_s=5)
    assert stopped.status == STOPPED and not _alive(run.pid) and not _alive(worker)
    with pytest.raises(RuntimeError, match="no checkpoint"):
        registry.resume(run.output_dir)
    (tmp_path / "long" / "checkpoint-2").mkdir()
    (tmp_path / "long" / ".staging-checkpoint-3").mkdir()  # a killed save: never resumed from
    worker_file.unlink()
    resumed = registry.resume(run.output_dir)
    assert resumed.status == RUNNING and resumed.starts == 2
    _wait_for(lambda: worker_file.exists() and worker_file.read_text().strip() != "")
    _wait_for(lambda: "resume_from_checkpoint=" in run.log_path.read_text())
    log = run.log_path.read_text()
    assert f"resume_from_checkpoint={tmp_path / 'long' / 'checkpoint-2'}" in log and "[webui] resuming from" in log
    registry.stop(run.output_dir, grace_s=5)
    assert not _alive(int(worker_file.read_text()))


def test_a_run_an_earlier_board_left_running_whose_process_is_gone_is_lost(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    gone = 2**22 + 12345  # above the largest pid Linux hands out (pid_max <= 2**22): no such process
    (folder / RECORD_FILE).write_text(
        json.dumps({"output_dir": str(folder), "nproc": 1, "status": RUNNING, "pid": gone, "started": 1.0})
    )
    (run,) = RunRegistry(tmp_path).runs()
    assert run.status == LOST and json.loads((folder / RECORD_FILE).read_text())["status"] == LOST

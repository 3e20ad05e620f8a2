"""Training runs started from the board: each one `ulysses-pro train CONFIG.yaml` in a process group
of its own (never in the web server's process), with its files in its output_dir.

`webui_config.yaml` is the config the run was started with (the CLI's YAML), `webui_run.log` its
output, `webui_run.json` its record (status, pid, times, exit code), so a board started later lists
runs an earlier one started. Stop sends SIGTERM to the whole group (the launcher and every rank),
then SIGKILL; resume starts the same config again from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .form import to_yaml

CONFIG_FILE, LOG_FILE, RECORD_FILE = "webui_config.yaml", "webui_run.log", "webui_run.json"
RUNNING, FINISHED, FAILED, STOPPED, LOST = "running", "finished", "failed", "stopped", "lost"


@dataclass
class Run:
    """One run's record (what webui_run.json holds)."""

    output_dir: str
    nproc: int
    status: str = RUNNING
    pid: int | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    starts: int = 1  # 1 + the times it was resumed

    @property
    def name(self) -> str:
        return Path(self.output_dir).name

    @property
    def config_path(self) -> Path:
        return Path(self.output_dir) / CONFIG_FILE

    @property
    def log_path(self) -> Path:
        return Path(self.output_dir) / LOG_FILE


def train_argv(config_path: str | Path, overrides: list[str] | None = None) -> list[str]:
    """The training command: this interpreter's `ulysses-pro train` (the console script's module)."""
    return [sys.executable, "-m", "ulysses_pro", "train", str(config_path), *(overrides or [])]


def train_env(nproc: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The run's environment: NPROC_PER_NODE (the CLI relaunches under torchrun), unbuffered output
    for the live log, and none of a surrounding job's rank variables."""
    env = dict(os.environ if base is None else base)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env.update(NPROC_PER_NODE=str(nproc), PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest whole `checkpoint-N` (the trainer's own rule: staging folders never count)."""
    from ..train.checkpoints import last_checkpoint as find

    return find(str(output_dir))


class RunRegistry:
    """The board's runs: those it started (it holds their processes) and those found under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._runs: dict[str, Run] = {}
        self._processes: dict[str, subprocess.Popen] = {}
        self._stopping: set[str] = set()
        self._lock = threading.Lock()

    def start(self, config: dict, nproc: int) -> Run:
        """Write the config into its output_dir and start training it."""
        output_dir = str(Path(config.get("output_dir") or self.new_output_dir()).resolve())
        config = {**config, "output_dir": output_dir}
        with self._lock:
            current = self._runs.get(output_dir)
            if current is not None and self._refresh(current).status == RUNNING:
                raise RuntimeError(f"a run is already training into {output_dir}; stop it first")
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            run = Run(output_dir=output_dir, nproc=int(nproc))
            run.config_path.write_text(to_yaml(config, run.nproc, str(run.config_path)), encoding="utf-8")
            run.log_path.write_text("", encoding="utf-8")
            self._runs[output_dir] = run
            self._launch(run, [])
            return run

    def resume(self, output_dir: str) -> Run:
        """Start a stopped or failed run again with its config, from its last checkpoint."""
        with self._lock:
            run = self._find(output_dir)
            if self._refresh(run).status == RUNNING:
                raise RuntimeError(f"{run.name} is still running")
            checkpoint = last_checkpoint(run.output_dir)
            if checkpoint is None:
                raise RuntimeError(f"{run.name} has no checkpoint to resume from (save_steps decides when)")
            run.starts += 1
            run.ended = run.returncode = None
            with run.log_path.open("a", encoding="utf-8") as log:
                log.write(f"\n[webui] resuming from {checkpoint}\n")
            # Explicit, so `overwrite_output_dir: true` in the config cannot start it over.
            self._launch(run, [f"resume_from_checkpoint={checkpoint}"])
            return run

    def stop(self, output_dir: str, grace_s: float = 10.0) -> Run:
        """SIGTERM to the run's process group, SIGKILL after `grace_s`."""
        with self._lock:
            run = self._find(output_dir)
            process = self._processes.get(run.output_dir)
            if self._refresh(run).status != RUNNING:
                return run
            self._stopping.add(run.output_dir)
        # torch's elastic agent starts each rank in a session of its own: signal their groups too.
        groups = [run.pid, *descendants(run.pid)]
        for pid in groups:
            _signal_group(pid, signal.SIGTERM)
        deadline = time.time() + grace_s
        while time.time() < deadline and (
            _alive(run.pid, process) or any(_alive(pid, None) for pid in groups[1:])
        ):
            time.sleep(0.1)
        for pid in groups:
            if _alive(pid, process if pid == run.pid else None):
                _signal_group(pid, signal.SIGKILL)
        if process is not None:
            process.wait(timeout=grace_s)
        with self._lock:
            return self._refresh(run)

    def runs(self) -> list[Run]:
        """Every run, newest first, each with its current status."""
        with self._lock:
            for record in sorted(self.root.glob(f"*/{RECORD_FILE}")) if self.root.is_dir() else []:
                key = str(record.parent.resolve())
                if key not in self._runs:
                    loaded = _load(record)
                    if loaded is not None:
                        self._runs[key] = loaded
            for run in self._runs.values():
                self._refresh(run)
            return sorted(self._runs.values(), key=lambda r: r.started, reverse=True)

    def get(self, output_dir: str) -> Run:
        with self._lock:
            return self._refresh(self._find(output_dir))

    def new_output_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, count = self.root / f"run-{stamp}", 1
        while path.exists() or str(path.resolve()) in self._runs:
            count += 1
            path = self.root / f"run-{stamp}-{count}"
        return path

    # -- internals (called with the lock held) ------------------------------------------------

    def _find(self, output_dir: str) -> Run:
        key = str(Path(output_dir).resolve())
        if key not in self._runs:
            loaded = _load(Path(key) / RECORD_FILE)
            if loaded is None:
                raise KeyError(f"no run in {output_dir}")
            self._runs[key] = loaded
        return self._runs[key]

    def _launch(self, run: Run, overrides: list[str]) -> None:
        with run.log_path.open("a", encoding="utf-8") as log:
            process = subprocess.Popen(
                train_argv(run.config_path, overrides),
                env=train_env(run.nproc),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop reaches every rank, and only them
            )
        self._processes[run.output_dir] = process
        self._stopping.discard(run.output_dir)
        run.pid, run.status, run.started = process.pid, RUNNING, time.time()
        _save(run)

    def _refresh(self, run: Run) -> Run:
        if run.status != RUNNING:
            return run
        process = self._processes.get(run.output_dir)
        if process is not None:
            code = process.poll()
            if code is None:
                return run
            run.returncode = code
            stopped = run.output_dir in self._stopping
            run.status = STOPPED if stopped else (FINISHED if code == 0 else FAILED)
        elif run.pid is None or not _alive(run.pid, None):
            run.status = LOST  # started by an earlier board that did not see it end
        else:
            return run
        run.ended = time.time()
        _save(run)
        return run


def _alive(pid: int | None, process: subprocess.Popen | None) -> bool:
    if process is not None:
        return process.poll() is None
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def descendants(pid: int | None) -> list[int]:
    """Every process below `pid` (Linux /proc; empty elsewhere), children before grandchildren."""
    if pid is None:
        return []
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # comm (field 2) may hold spaces and parentheses: the parent pid follows its last ')'
            parent = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _signal_group(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is the leader's pid
    except OSError:
        pass  # gone already, or not a group leader (then its leader's group got the signal)


def _save(run: Run) -> None:
    path = Path(run.output_dir) / RECORD_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(run), indent=1), encoding="utf-8")
    temporary.replace(path)


def _load(path: Path) -> Run | None:
    try:
        return Run(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None

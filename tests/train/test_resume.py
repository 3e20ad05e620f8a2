"""Nothing lost: a job killed with SIGKILL, at a random step or in the middle of a checkpoint
save, resumes from its last complete checkpoint and continues exactly as if never stopped."""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from ulysses_pro.train.checkpoints import last_checkpoint

from ..cli_runner import processes_with, run_cli, start_cli, write_config

STEPS = 8


def _config(tmp_path, name: str, **keys) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    base = {"max_steps": STEPS, "save_steps": 2, "plot_loss": False, "output_dir": str(folder / "out")}
    return write_config(folder, **{**base, **keys})


def _losses(config: Path) -> list[float]:
    out = config.parent / "out"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _assert_same_run(reference: list[float], resumed: list[float]) -> None:
    assert len(reference) == len(resumed) == STEPS
    errors = [abs(a - b) / abs(a) for a, b in zip(reference, resumed)]
    assert max(errors) <= 1e-6, errors


def _finish(config: Path, nproc: int) -> str:
    result = run_cli(["-m", "ulysses_pro", "train", str(config)], {"NPROC_PER_NODE": str(nproc)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _kill_job(job, marker: str) -> None:
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in processes_with(JOB_MARKER=marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait(timeout=60)


RESUME_CASES = [
    # NEFTune's per-rank noise streams, the gradient guard's counts and a stream's read position
    # are part of the state
    pytest.param(
        2,
        {
            "sequence_parallel_size": 2,
            "neftune_noise_alpha": 5.0,
            "gradient_guard": True,
            "gradient_guard_strategies": "noise,clipping",
            "gradient_guard_vanishing_threshold": 1.0,
            "streaming": True,
            "buffer_size": 16,
        },
        id="sp2-neftune-guard-streaming",
    ),
    # DP 2 x SP 2, reading a stream: the resumed run picks the stream up where the checkpoint was
    pytest.param(
        4,
        {"sequence_parallel_size": 2, "streaming": True, "buffer_size": 16, "per_device_train_batch_size": 1},
        id="dp2xsp2-streaming",
        marks=pytest.mark.slow,  # 53 s on 2 cores; SP 2 reads a stream in the default case
    ),
    # FSDP2's sharded checkpoints (the default run resumes one at another world size:
    # tests/engines/test_fsdp2.py)
    pytest.param(
        4,
        {"sequence_parallel_size": 2, "fsdp": "full_shard", "per_device_train_batch_size": 1},
        id="fsdp2-dp2xsp2",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize(("nproc", "keys"), RESUME_CASES)
def test_resume_after_sigkill_at_a_random_step_reproduces_the_uninterrupted_run(tmp_path, nproc, keys):
    reference = _config(tmp_path, "reference", **keys)
    _finish(reference, nproc)

    config = _config(tmp_path, "killed", **keys)
    kill_after = random.Random().randint(3, STEPS - 1)
    print(f"killing the job after step {kill_after} was logged")
    marker = uuid.uuid4().hex
    log = config.parent / "job.log"
    job = start_cli(
        ["-m", "ulysses_pro", "train", str(config)], {"NPROC_PER_NODE": str(nproc), "JOB_MARKER": marker}, log
    )
    try:
        deadline = time.monotonic() + 300
        while log.read_text(errors="replace").count("{'loss'") < kill_after:
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        _kill_job(job, marker)
    checkpoint = last_checkpoint(config.parent / "out")
    assert checkpoint is not None and (checkpoint / "trainer_state.json").is_file()
    assert len(list(checkpoint.glob("ulysses_pro_rank*.pt"))) == nproc

    stdout = _finish(config, nproc)  # overwrite_output_dir is false: it resumes by itself
    assert f"resuming from {checkpoint}" in stdout
    _assert_same_run(_losses(reference), _losses(config))


# Runs the CLI in this process with a checkpoint save that stops, forever, between the optimizer
# state and the RNG states of one step: the test kills it there.
SLOW_SAVE = """
import pathlib, sys, time
from ulysses_pro.train.trainer import UlyssesTrainer
from ulysses_pro.cli import main
config, step, flag = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
save_rng_state = UlyssesTrainer._save_rng_state
def stuck(self, output_dir):
    if self.state.global_step == step:
        flag.write_text(str(output_dir))
        time.sleep(3600)
    save_rng_state(self, output_dir)
UlyssesTrainer._save_rng_state = stuck
sys.exit(main(["train", config]))
"""


def test_a_kill_during_a_checkpoint_save_leaves_nothing_resume_would_pick_up(tmp_path):
    reference = _config(tmp_path, "reference")
    _finish(reference, 1)

    config = _config(tmp_path, "killed")
    out = config.parent / "out"
    flag = tmp_path / "saving"
    marker = uuid.uuid4().hex
    job = start_cli(
        ["-c", SLOW_SAVE, str(config), "4", str(flag)], {"JOB_MARKER": marker}, config.parent / "job.log"
    )
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert job.poll() is None, (config.parent / "job.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        _kill_job(job, marker)
    # the weights and optimizer of step 4 were written, but only into the staging folder
    assert Path(flag.read_text()).parent.name == ".staging-checkpoint-4"
    assert (Path(flag.read_text()) / "optimizer.pt").is_file()
    assert not (out / "checkpoint-4").exists()
    assert last_checkpoint(out) == out / "checkpoint-2"

    stdout = _finish(config, 1)
    assert f"resuming from {out / 'checkpoint-2'}" in stdout
    assert not (out / ".staging-checkpoint-4").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (2, 4, 6, 8)]
    _assert_same_run(_losses(reference), _losses(config))

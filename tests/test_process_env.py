"""srun without torchrun (SLURM task variables as torch.distributed ranks) and the CUDA allocator
setting; the SLURM mapping also runs end to end: two local processes with the variables srun sets."""

from __future__ import annotations

import socket

import pytest

from ulysses_pro.process_env import (
    ALLOCATOR_KEY,
    expandable_cuda_segments,
    first_host,
    slurm_ranks,
    tasks_on_node,
)

from .cli_runner import start_cli, write_config


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("gpu[003-004,9],cpu1", "gpu003"),
        ("node7", "node7"),
        ("a[1,3]-ib,b2", "a1-ib"),
        ("127.0.0.1", "127.0.0.1"),
        ("rack[1-2]-node[01-04]", "rack1-node01"),
    ],
)
def test_the_first_host_of_a_slurm_hostlist(nodelist, host):
    assert first_host(nodelist) == host


def test_tasks_per_node_is_read_per_node():
    assert [tasks_on_node("8(x2),4", node) for node in range(3)] == [8, 8, 4]
    with pytest.raises(ValueError, match="cannot read 'x'"):
        tasks_on_node("8,x", 0)
    with pytest.raises(ValueError, match="lists 2 nodes, not node 2"):
        tasks_on_node("8(x2)", 2)


def _srun_task(procid: int, **extra) -> dict[str, str]:
    """What srun sets for task `procid` of `--nodes 2 --ntasks-per-node 8`."""
    return {
        "SLURM_PROCID": str(procid),
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_LOCALID": str(procid % 8),
        "SLURM_NODEID": str(procid // 8),
        "SLURM_TASKS_PER_NODE": "8(x2)",
        "SLURM_NODELIST": "gpu[017-018]",
        "SLURM_JOB_ID": "123456",
        **extra,
    }


def test_srun_tasks_map_onto_torch_distributed_ranks():
    assert slurm_ranks(_srun_task(11)) == {
        "RANK": "11",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "3",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu017",
        "MASTER_PORT": str(29500 + 123456 % 10_000),  # the same on every task of the job
    }
    # what the user sets wins; torchrun inside srun, or a single task, is left alone
    assert slurm_ranks(_srun_task(0, MASTER_PORT="4000", MASTER_ADDR="10.0.0.1"))["MASTER_ADDR"] == "10.0.0.1"
    assert slurm_ranks({**_srun_task(0), "RANK": "0", "LOCAL_RANK": "0"}) is None
    assert slurm_ranks({**_srun_task(0), "SLURM_STEP_NUM_TASKS": "1"}) is None
    # the sbatch script itself (not an srun step): left alone, so NPROC_PER_NODE still relaunches
    batch_script = {k: v for k, v in _srun_task(0).items() if k != "SLURM_STEP_NUM_TASKS"}
    assert slurm_ranks(batch_script) is None
    assert slurm_ranks({}) is None


def test_cuda_runs_get_expandable_segments_unless_the_user_chose():
    env = {}
    assert expandable_cuda_segments(env, cuda=True) and env[ALLOCATOR_KEY] == "expandable_segments:True"
    env = {ALLOCATOR_KEY: "max_split_size_mb:512"}
    assert not expandable_cuda_segments(env, cuda=True) and env[ALLOCATOR_KEY] == "max_split_size_mb:512"
    env = {}
    assert not expandable_cuda_segments(env, cuda=False) and ALLOCATOR_KEY not in env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_srun_tasks_train_one_sequence_parallel_job_without_torchrun(tmp_path):
    config = write_config(
        tmp_path, max_steps=2, save_strategy="no", plot_loss=False, sequence_parallel_size=2
    )
    port = str(_free_port())
    tasks = []
    for procid in range(2):
        srun_variables = {
            "SLURM_PROCID": str(procid),
            "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_LOCALID": str(procid),
            "SLURM_NODEID": "0",
            "SLURM_TASKS_PER_NODE": "2",
            "SLURM_NODELIST": "127.0.0.1",
            "MASTER_PORT": port,
            "NPROC_PER_NODE": "2",  # ignored under srun: each task is one rank, nothing relaunches
        }
        log = tmp_path / f"task{procid}.log"
        tasks.append(start_cli(["-m", "ulysses_pro", "train", str(config)], srun_variables, log))
    codes = [task.wait(timeout=300) for task in tasks]
    rank0 = (tmp_path / "task0.log").read_text()
    assert codes == [0, 0], rank0[-3000:] + (tmp_path / "task1.log").read_text()[-3000:]
    assert "srun: 2 tasks (2 on this node), rendezvous at 127.0.0.1:" in rank0
    assert "world 2 = dp 1 x sp 2" in rank0
    assert "'loss'" in rank0


def test_the_slurm_example_is_a_valid_two_node_sp8_job():
    import re

    from ulysses_pro.config import load_config
    from ulysses_pro.parallel.mesh import resolve_degrees

    from .cli_runner import REPO

    script = (REPO / "examples/slurm/sft_2x8.sbatch").read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", script).group(1))
    per_node = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", script).group(1))
    (config_path,) = re.findall(r"srun .*ulysses-pro train (\S+)", script)
    config = load_config(str(REPO / config_path))
    sp = config.parallel.sequence_parallel_size
    assert (nodes, per_node, sp) == (2, 8, 8) and (nodes * per_node) % sp == 0
    # Qwen2.5-7B's 28 query / 4 KV heads: auto splits them ulysses 4 x ring 2
    assert resolve_degrees(sp, config.parallel.sequence_parallel_mode, 28, 4) == (4, 2)

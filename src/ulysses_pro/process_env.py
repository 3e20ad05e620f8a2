"""The process environment a run needs before torch starts: SLURM's tasks as torch.distributed
ranks (so `srun ulysses-pro train cfg.yaml` runs without torchrun), and the CUDA allocator setting
that keeps long sequences from fragmenting GPU memory."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, MutableMapping

logger = logging.getLogger(__name__)

# SLURM job ids are spread over this many ports above 29500 (torch's default), so two jobs that
# share a node rarely meet on one port; MASTER_PORT set by the user always wins.
PORT_SPREAD = 10_000
ALLOCATOR_KEY = "PYTORCH_CUDA_ALLOC_CONF"
ALLOCATOR_SETTING = "expandable_segments:True"


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'gpu[003-004,9],cpu1' -> 'gpu003'."""
    depth, end = 0, len(nodelist)
    for index, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    host = nodelist[:end].strip()
    # Every bracket group gives its first value (zero padding kept: it is part of the name).
    return re.sub(r"\[([^\]]+)\]", lambda group: group.group(1).split(",")[0].split("-")[0], host)


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Tasks on node `node` from SLURM_TASKS_PER_NODE, e.g. '8(x2),4' -> [8, 8, 4]."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ValueError(f"SLURM_TASKS_PER_NODE={tasks_per_node!r}: cannot read {part!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node < len(counts):
        raise ValueError(
            f"SLURM_TASKS_PER_NODE={tasks_per_node!r} lists {len(counts)} nodes, not node {node}"
        )
    return counts[node]


def slurm_ranks(env: Mapping[str, str]) -> dict[str, str] | None:
    """torch.distributed's variables for this SLURM task, or None when the process is not one task of
    a multi-task srun step (or torchrun has set them already). The step's own variables decide: an
    sbatch script itself also has SLURM_PROCID 0 and the job's SLURM_NTASKS, but no step task count,
    and must stay free to relaunch with NPROC_PER_NODE."""
    if "RANK" in env or "LOCAL_RANK" in env or "SLURM_PROCID" not in env:
        return None
    world = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
    if world <= 1:
        return None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist and "MASTER_ADDR" not in env:
        raise ValueError("srun task without SLURM_NODELIST: set MASTER_ADDR to the first node's address")
    tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if tasks_per_node:
        local_world = tasks_on_node(tasks_per_node, int(env.get("SLURM_NODEID", "0")))
    else:
        local_world = int(env.get("SLURM_NTASKS_PER_NODE") or world)
    port = env.get("MASTER_PORT") or str(29500 + int(env.get("SLURM_JOB_ID", "0")) % PORT_SPREAD)
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(local_world),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(nodelist),
        "MASTER_PORT": port,
    }


def use_slurm_tasks(env: MutableMapping[str, str] = os.environ) -> dict[str, str] | None:
    """Map SLURM's task variables onto torch.distributed's (see `slurm_ranks`); what it set, or None."""
    ranks = slurm_ranks(env)
    if ranks is not None:
        env.update(ranks)
    return ranks


def describe_slurm(ranks: Mapping[str, str]) -> str:
    return (
        f"srun: {ranks['WORLD_SIZE']} tasks ({ranks['LOCAL_WORLD_SIZE']} on this node), "
        f"rendezvous at {ranks['MASTER_ADDR']}:{ranks['MASTER_PORT']}"
    )


def expandable_cuda_segments(env: MutableMapping[str, str] = os.environ, cuda: bool | None = None) -> bool:
    """On CUDA, `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` unless the user set the variable:
    long, varying sequence lengths otherwise leave the caching allocator's fixed segments
    fragmented. Must run before the first CUDA allocation (the allocator reads it once). True if set."""
    if ALLOCATOR_KEY in env:
        return False
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()  # does not start the allocator
    if not cuda:
        return False
    env[ALLOCATOR_KEY] = ALLOCATOR_SETTING
    if env.get("RANK", "0") == "0":
        logger.info(
            "%s=%s (long sequences fragment fixed CUDA segments; set it to override)",
            ALLOCATOR_KEY,
            ALLOCATOR_SETTING,
        )
    return True

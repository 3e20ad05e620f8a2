"""Reward functions named in the config (`reward_funcs`), loaded and called the way TRL calls them.

A name is `package.module:function` (importable) or `path/to/file.py:function` (relative to the
working directory or the config file). Each function is called once per step and DP rank with
keyword arguments, all lists aligned with the completions:
`prompts` (the last user message), `completions` (decoded, special tokens removed),
`completion_ids`, `answer` (the row's reference answer, or None) and every other column of the
dataset row. It returns one float per completion (None counts as 0 for that completion). The
weighted sum over functions is the reward.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...config import ConfigError
from .rollout import Rollout


@dataclass
class RewardFunction:
    name: str
    function: Callable
    weight: float = 1.0


def _load_module(spec: str, base_dir: Path | None):
    if spec.endswith(".py"):
        candidates = [Path(spec)] + ([base_dir / spec] if base_dir is not None else [])
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise ConfigError(
                f"reward_funcs: file {spec} not found (looked in {', '.join(map(str, candidates))})"
            )
        module_spec = importlib.util.spec_from_file_location(f"ulysses_pro_rewards_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as err:
        raise ConfigError(f"reward_funcs: cannot import {spec!r}: {err}") from None


def load_reward_functions(
    names: Sequence[str], weights: Sequence[float] | None = None, base_dir: Path | None = None
) -> list[RewardFunction]:
    """Resolve each `module:function` (or `file.py:function`) name; errors name the entry at fault."""
    loaded = []
    for index, name in enumerate(names):
        module_name, sep, attribute = str(name).rpartition(":")
        if not sep or not module_name or not attribute:
            raise ConfigError(f"reward_funcs[{index}]: {name!r} is not `package.module:function`")
        module = _load_module(module_name, base_dir)
        function = getattr(module, attribute, None)
        if not callable(function):
            raise ConfigError(f"reward_funcs[{index}]: {module_name} has no function {attribute!r}")
        loaded.append(RewardFunction(name, function, 1.0 if weights is None else float(weights[index])))
    return loaded


def reward_arguments(rollouts: Sequence[Rollout]) -> dict[str, list]:
    """The keyword arguments every reward function receives (lists aligned with `rollouts`)."""
    rows = [r.prompt.reward_columns() for r in rollouts]
    keys = sorted({key for row in rows for key in row})
    return {
        **{key: [row.get(key) for row in rows] for key in keys},
        "prompts": [r.prompt.prompt for r in rollouts],
        "completions": [r.completion for r in rollouts],
        "completion_ids": [r.completion_ids for r in rollouts],
    }


def score_once_per_group(
    functions: Sequence[RewardFunction], rollouts: Sequence[Rollout], group=None
) -> tuple[list[float], dict[str, list[float]]]:
    """`score` on the group's rank 0 only, its result on every rank: the ranks of an SP group hold
    the same completions, so each reward function runs once per DP rank's prompts, not once per SP
    rank. A function's error reaches every rank (none is left waiting in the broadcast)."""
    import torch.distributed as dist

    from ...parallel.comm import broadcast_from_group_leader

    leader = group is None or dist.get_rank(group) == 0
    outcome: list = [None, None]
    if leader:
        try:
            outcome[0] = score(functions, rollouts)
        except Exception as error:  # re-raised below, on every rank of the group
            outcome[1] = str(error)
    broadcast_from_group_leader(outcome, group)
    if outcome[1] is not None:
        raise ValueError(outcome[1])
    return outcome[0]


def score(
    functions: Sequence[RewardFunction], rollouts: Sequence[Rollout]
) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, each function's own rewards by name)."""
    arguments = reward_arguments(rollouts)
    per_function: dict[str, list[float]] = {}
    totals = [0.0] * len(rollouts)
    for reward in functions:
        values = reward.function(**arguments)
        if values is None or len(values) != len(rollouts):
            raise ValueError(
                f"reward function {reward.name} returned {None if values is None else len(values)} values "
                f"for {len(rollouts)} completions; return one float per completion"
            )
        values = [0.0 if v is None else float(v) for v in values]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise ValueError(
                f"reward function {reward.name} returned {values[bad]} for the completion of prompt "
                f"{rollouts[bad].prompt.where}: {rollouts[bad].completion[:80]!r}"
            )
        per_function[reward.name] = values
        totals = [t + reward.weight * v for t, v in zip(totals, values)]
    return totals, per_function

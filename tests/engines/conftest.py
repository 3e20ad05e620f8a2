"""The FSDP2 run both the resume and the conversion tests read (trained once per session)."""

from __future__ import annotations

import pytest

from ..launcher import run_ranks
from ..train.harness import parallel_keys
from ..train.test_sequence_parallel import case_keys
from .test_fsdp2 import _train_sharded


@pytest.fixture(scope="session")
def checkpointed_run(tmp_path_factory):
    """SFT at DP 2 x SP 2 on 4 ranks under FSDP2, checkpointed every 2 of its 4 steps."""
    folder = tmp_path_factory.mktemp("checkpointed")
    saving = {
        "save_strategy": "steps",
        "save_steps": 2,
        "fsdp": "full_shard",
        "per_device_train_batch_size": 2,
    }
    keys = case_keys(folder, "four", **saving, **parallel_keys(2, "ulysses"))
    return folder / "four", run_ranks(_train_sharded, 4, keys)[0]

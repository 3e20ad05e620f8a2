"""The Python API: initialize -> run_training -> get_status -> cleanup, as a context manager too."""

from __future__ import annotations

from pathlib import Path

import pytest

from .launcher import run_ranks

DATA = str(Path(__file__).resolve().parent.parent / "data")


def _config(tmp_path, **keys):
    return {
        "model_name_or_path": "tiny:llama",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "demo_tasks",
        "dataset_dir": DATA,
        "max_samples": 32,
        "cutoff_len": 64,
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "disable_tqdm": True,
        "output_dir": str(tmp_path / "out"),
        **keys,
    }


def test_lifecycle_single_process(tmp_path):
    from transformers import AttentionInterface

    from ulysses_pro import UlyssesTrainingManager
    from ulysses_pro.config import ConfigError

    manager = UlyssesTrainingManager()
    assert manager.get_status()["state"] == "created"
    with pytest.raises(RuntimeError, match="initialize"):
        manager.run_training()
    with pytest.raises(ConfigError, match="learning_rat"):
        manager.initialize(_config(tmp_path), learning_rat=1.0)

    manager.initialize(_config(tmp_path), max_steps=2, adjust_lr=2.0)
    status = manager.get_status()
    assert status["state"] == "initialized" and status["stage"] == "sft" and status["step"] == 0
    assert manager.config.training.learning_rate == pytest.approx(2e-3)
    metrics = manager.run_training()
    status = manager.get_status()
    assert status["state"] == "finished" and status["step"] == 2
    assert status["last_loss"] == pytest.approx(metrics["loss"]) and status["last_loss"] > 0
    assert status["world_size"] == 1 and status["output_dir"] == str(tmp_path / "out")
    assert status["sequence_parallel"] == {"size": 1, "mode": "auto", "layout": None}
    assert (tmp_path / "out" / "model.safetensors").is_file()
    manager.cleanup()
    assert manager.get_status()["state"] == "cleaned up"
    assert "ulysses_pro_sp" not in AttentionInterface._global_mapping


def _sequence_parallel_manager(rank, world, config):
    import torch.distributed as dist
    from transformers import AttentionInterface

    from ulysses_pro import UlyssesTrainingManager

    with UlyssesTrainingManager() as manager:
        manager.initialize(config)
        manager.run_training()
        status = manager.get_status()
        model = manager.trainer.model
        sp_group = manager.trainer.sp_layout.sp_group
        registered = "ulysses_pro_sp" in AttentionInterface._global_mapping
        alive_during = sp_group in dist.distributed_c10d._world.pg_names
    groups_alive = sp_group in dist.distributed_c10d._world.pg_names
    return {
        "status": status,
        "registered_during_run": registered,
        "registered_after": "ulysses_pro_sp" in AttentionInterface._global_mapping,
        "attention_after": model.config._attn_implementation,
        "sp_group_alive_during_run": alive_during,
        "sp_group_alive": groups_alive,
        "default_group_alive": dist.is_initialized(),
    }


def test_context_manager_with_sequence_parallelism_cleans_up(tmp_path):
    config = _config(tmp_path, sequence_parallel_size=2, sequence_parallel_mode="zigzag-ring")
    for result in run_ranks(_sequence_parallel_manager, 2, config):
        status = result["status"]
        assert status["state"] == "finished" and status["step"] == 3 and status["world_size"] == 2
        assert "dp 1 x sp 2 (ulysses 1 x ring 2" in status["sequence_parallel"]["layout"]
        assert result["registered_during_run"] and not result["registered_after"]
        assert result["attention_after"] != "ulysses_pro_sp"
        assert result["sp_group_alive_during_run"] and not result["sp_group_alive"]
        assert result["default_group_alive"]  # the launcher's group, not the manager's to destroy


def test_readme_example_runs(tmp_path):
    """The README's Python API example, as written, with fewer steps and a temporary output folder."""
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    example = re.search(r"### Python API\s+```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert "max_steps=100" in example
    example = example.replace("max_steps=100", f"max_steps=3, output_dir={str(tmp_path)!r}")
    result = subprocess.run(
        [sys.executable, "-c", example], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'state': 'finished'" in result.stdout and "'step': 3" in result.stdout
    assert (tmp_path / "model.safetensors").is_file()

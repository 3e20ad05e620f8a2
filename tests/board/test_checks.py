"""Bad input on the board gives the CLI's own one-line error, before anything starts; the SP layout,
the planner's answer and the data preview for a good one."""

from __future__ import annotations

import pytest

from tests.cli_runner import REPO, run_cli
from ulysses_pro.board.actions import Board, dataset_names
from ulysses_pro.board.checks import InputError, check_config
from ulysses_pro.board.form import FormError, form_defaults, to_yaml

MODEL = "tiny:llama?hidden_size=64&num_layers=2"


def _config(tmp_path, **keys):
    config = {
        "model_name_or_path": MODEL,
        "template": "chatml",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "demo_tasks",
        "dataset_dir": str(REPO / "data"),
        "cutoff_len": 64,
        "output_dir": str(tmp_path / "out"),
        "sequence_parallel_size": 2,
        "report_to": "none",
    }
    config.update(keys)
    return config


@pytest.mark.parametrize(
    "keys",
    [
        {"learning_rat": 0.1},  # refused by load_config
        {"dataset": "demo_nowhere"},  # refused by preflight (data folder)
        {"sequence_parallel_size": 4},  # refused by preflight (world size)
    ],
    ids=["unknown-key", "unknown-dataset", "sp-size-vs-processes"],
)
def test_the_board_shows_the_line_ulysses_pro_train_prints(tmp_path, keys):
    config = _config(tmp_path, **keys)
    path = tmp_path / "webui_config.yaml"
    with pytest.raises(InputError) as board_error:
        check_config(config, 2, str(path))
    path.write_text(to_yaml(config, 2, str(path)))
    cli = run_cli(["-m", "ulysses_pro", "train", str(path)], {"NPROC_PER_NODE": "2"}, timeout=120)
    assert cli.returncode == 2
    assert str(board_error.value) == cli.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_start_refuses_bad_input_before_creating_anything(tmp_path):
    board = Board(tmp_path / "runs")
    values = {**form_defaults(), "model_name_or_path": MODEL, "dataset": ["demo_nowhere"],
              "dataset_dir": str(REPO / "data"), "output_dir": str(tmp_path / "out")}  # fmt: skip
    with pytest.raises(InputError, match="^config error: .*dataset 'demo_nowhere' is not defined"):
        board.start(values)
    with pytest.raises(FormError, match="not a whole number"):
        board.start({**values, "cutoff_len": "many"})
    assert not (tmp_path / "out").exists() and board.registry.runs() == []


def test_preview_plan_and_rows_for_a_good_config(tmp_path):
    board = Board(tmp_path / "runs")
    values = {
        **form_defaults(),
        "model_name_or_path": MODEL,
        "template": "chatml",
        "finetuning_type": "full",
        "dataset_dir": str(REPO / "data"),
        "dataset": ["demo_tasks"],
        "cutoff_len": 64,
        "sequence_parallel_size": 2,
        "nproc": 2,
        "output_dir": str(tmp_path / "out"),
    }
    note, text, command, layout = board.preview(values)
    assert note.startswith("ok") and "sequence_parallel_size: 2" in text
    assert command == f"NPROC_PER_NODE=2 ulysses-pro train {tmp_path / 'out' / 'webui_config.yaml'}"
    # tiny llama: 4 heads, 2 KV heads -> auto takes pure ulysses at SP 2
    assert "4 attention heads, 2 KV heads" in layout and "auto: ulysses 2 x ring 1" in layout
    planned = board.plan({**values, "sequence_parallel_mode": "zigzag-ring"}, "1GiB")
    assert "zigzag-ring: ulysses 1 x ring 2" in planned and "auto: ulysses 2 x ring 1" in planned
    assert "per rank at cutoff_len 64, SP 2 (ulysses 1 x ring 2)" in planned
    assert "longest sequence that fits 1.00 GiB per GPU:" in planned
    with pytest.raises(InputError, match="memory size"):
        board.plan(values, "lots")
    rows = board.rows(values, 2)
    assert rows.count("── ") == 2 and "demo_tasks.json" in rows and "⟦" in rows
    assert "demo_tasks" in dataset_names(str(REPO / "data")) and dataset_names(str(tmp_path)) == []

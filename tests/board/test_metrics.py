"""trainer_log.jsonl: written by the training hook (train/metrics_log.py), read back by the board."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from ulysses_pro.board.metrics import curve_points, final_metrics, format_seconds, progress, read_log
from ulysses_pro.train.metrics_log import LOG_FILE, MetricsLog


def _state(step: int, tokens: int = 0):
    return SimpleNamespace(global_step=step, max_steps=10, num_input_tokens_seen=tokens, is_world_process_zero=True)


def test_the_hook_writes_one_line_per_log_with_progress_throughput_and_memory(tmp_path):
    args = SimpleNamespace(output_dir=str(tmp_path), device=torch.device("cpu"))
    hook = MetricsLog()
    hook.on_train_begin(args, _state(0), None)
    hook.on_log(args, _state(2, tokens=400), None, logs={"loss": 2.5, "learning_rate": 1e-4, "epoch": 0.2})
    hook.on_log(args, _state(4, tokens=800), None, logs={"eval_loss": 2.25, "epoch": 0.4})
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == [2, 4] and records[0]["loss"] == 2.5
    first = records[0]
    assert first["total_steps"] == 10 and first["percentage"] == 20.0 and first["remaining_s"] >= 0
    assert first["total_tokens"] == 400 and first["tokens_per_s"] > 0
    assert first["memory"] == "host rss" and len(first["peak_memory_gib"]) == 1 and first["peak_memory_gib"][0] > 0
    assert curve_points(records) == [(2, 2.5, "loss"), (4, 2.25, "eval_loss")]


def test_a_resumed_run_keeps_the_lines_up_to_its_checkpoint_and_a_fresh_run_starts_over(tmp_path):
    path = tmp_path / LOG_FILE
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)))
    args = SimpleNamespace(output_dir=str(tmp_path), device=torch.device("cpu"))
    MetricsLog().on_train_begin(args, _state(2), None)  # resumed from checkpoint-2: steps 3, 4 run again
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2]
    MetricsLog().on_train_begin(args, _state(0), None)
    assert read_log(tmp_path) == []


def test_progress_takes_the_latest_step_and_each_ranks_largest_peak(tmp_path):
    lines = [
        {"step": 1, "total_steps": 4, "percentage": 25.0, "remaining_s": 30, "loss": 3.0,
         "peak_memory_gib": [1.0, 1.5], "memory": "cuda allocated", "tokens_per_s": 100.0},
        {"step": 2, "total_steps": 4, "percentage": 50.0, "remaining_s": 20, "loss": 2.0, "reward": 0.5,
         "peak_memory_gib": [1.25, 1.0], "memory": "cuda allocated", "tokens_per_s": 120.0},
    ]  # fmt: skip
    # a line cut short by a run killed mid-write is skipped, not an error
    (tmp_path / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "lo')
    found = progress(read_log(tmp_path))
    assert (found.step, found.total_steps, found.remaining_s) == (2, 4, 20)
    assert found.peak_memory_gib == [1.25, 1.5] and found.latest == {"loss": 2.0, "reward": 0.5}
    assert found.describe() == (
        "step 2/4 (50%) · 0:20 left · 120 tokens/s · peak cuda allocated GiB per rank: 1.25, 1.50"
    )
    assert progress([]).describe() == "no step logged yet"


def test_final_metrics_and_time_formatting(tmp_path):
    assert final_metrics(tmp_path) == {}
    (tmp_path / "all_results.json").write_text('{"train_loss": 1.5, "train_runtime": 3.2}')
    assert final_metrics(tmp_path)["train_loss"] == 1.5
    assert (format_seconds(65), format_seconds(3725), format_seconds(-3)) == ("1:05", "1:02:05", "0:00")


def test_the_live_log_keeps_only_the_last_redraw_of_a_progress_bar():
    from ulysses_pro.board.actions import readable_log

    raw = "start\n  0%|  | 0/4\r 50%|# | 2/4\r100%|##| 4/4\r\n{'loss': 1.0}\n"
    assert readable_log(raw) == "start\n100%|##| 4/4\n{'loss': 1.0}\n"

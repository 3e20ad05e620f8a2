"""What a run can be refused for from its config, config.json and data folder, before it tokenizes
a row or loads a weight."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.train import workflow
from ulysses_pro.train.preflight import preflight

DATA = str(Path(__file__).resolve().parents[2] / "data")


def _config(tmp_path, **keys):
    base = {
        "model_name_or_path": "tiny:llama",
        "stage": "sft",
        "do_train": True,
        "dataset": "demo_chat",
        "dataset_dir": DATA,
        "cutoff_len": 64,
        "output_dir": str(tmp_path / "out"),
    }
    return load_config({**base, **keys})


@pytest.mark.parametrize(
    ("keys", "world", "message"),
    [
        (
            {
                "model_name_or_path": "tiny:llama?hidden_size=72&num_heads=9&num_kv_heads=3",
                "sequence_parallel_size": 2,
                "sequence_parallel_mode": "ulysses",  # explicit ulysses stays strict; auto would ring
            },
            2,
            "does not divide the 9 attention heads; use sequence_parallel_mode: auto (which picks zigzag-ring",
        ),
        (
            {"sequence_parallel_size": 4, "sequence_parallel_mode": "hybrid", "ulysses_degree": 3},
            4,
            "config dict: ulysses_degree=3 must divide sequence_parallel_size=4",
        ),
        ({"sequence_parallel_size": 2}, 3, "must divide the number of processes (3)"),
        (
            {"model_name_or_path": "tiny:llama?max_position_embeddings=48"},
            1,
            "cutoff_len: 64 is above the 48 positions the model was trained for",
        ),
        (
            {"dataset": "demo_chat,demo_chatt"},
            1,
            "dataset 'demo_chatt' is not defined; did you mean 'demo_chat'?",
        ),
        (
            {"template": "lama3"},
            1,
            "template: 'lama3' is not a LLaMA-Factory template name; did you mean 'llama3'",
        ),
        (
            {"stage": "dpo", "dataset": "demo_chat"},
            1,
            "has no ranking: true; stage dpo needs preference rows",
        ),
    ],
)
def test_refused_before_any_row_or_weight(tmp_path, keys, world, message):
    with pytest.raises(ConfigError) as refused:
        preflight(_config(tmp_path, **keys), world)
    assert message in str(refused.value)


def test_what_sequence_parallelism_can_run_passes(tmp_path):
    # sliding windows shorter than cutoff_len train under SP (exact in every mode); 9 heads on the ring
    preflight(
        _config(tmp_path, model_name_or_path="tiny:mistral?sliding_window=32", sequence_parallel_size=2), 2
    )
    nine_heads = "tiny:llama?hidden_size=72&num_heads=9&num_kv_heads=3"
    preflight(
        _config(
            tmp_path,
            model_name_or_path=nine_heads,
            sequence_parallel_size=2,
            sequence_parallel_mode="zigzag-ring",
        ),
        2,
    )


def test_soft_capping_passes_and_bidirectional_attention_is_refused_under_sequence_parallelism(tmp_path):
    from ulysses_pro.models.tiny import build_tiny_config

    folder = tmp_path / "gemma2"
    build_tiny_config("gemma2", 512, attn_logit_softcapping=50.0).save_pretrained(folder)
    preflight(_config(tmp_path, model_name_or_path=str(folder), sequence_parallel_size=2), 2)
    config = build_tiny_config("gemma2", 512)
    config.use_bidirectional_attention = True  # Gemma 3's embedding variants
    config.save_pretrained(folder)
    with pytest.raises(ConfigError, match=r"attends bidirectionally \(use_bidirectional_attention: true\)"):
        preflight(_config(tmp_path, model_name_or_path=str(folder), sequence_parallel_size=2), 2)


def test_a_missing_dataset_file_is_named(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"mine": {"file_name": "gone.json"}}')
    with pytest.raises(ConfigError, match=r"gone.json: dataset file not found"):
        preflight(_config(tmp_path, dataset="mine", dataset_dir=str(tmp_path)), 1)


def test_rope_scaling_in_config_json_extends_the_positions(tmp_path):
    """A local model folder (where a hub id would go): config.json only, no weights needed."""
    from transformers import LlamaConfig

    folder = tmp_path / "model"

    def save_config(**extra):
        sizes = {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 1,
        }
        LlamaConfig(**sizes, intermediate_size=64, max_position_embeddings=32, **extra).save_pretrained(
            folder
        )

    save_config()
    with pytest.raises(ConfigError, match="above the 32 positions"):
        preflight(_config(tmp_path, model_name_or_path=str(folder)), 1)
    save_config(rope_scaling={"rope_type": "linear", "factor": 2.0})
    preflight(_config(tmp_path, model_name_or_path=str(folder)), 1)


def test_the_workflow_checks_before_it_tokenizes(tmp_path, monkeypatch):
    def tokenized(*args, **kwargs):
        raise AssertionError("the datasets were built before the check")

    monkeypatch.setattr(workflow, "build_datasets", tokenized)
    monkeypatch.setattr(workflow, "load_model", tokenized)
    config = _config(tmp_path, model_name_or_path="tiny:llama?max_position_embeddings=48")
    with pytest.raises(ConfigError, match="cutoff_len: 64 is above"):
        workflow.run_token_stage(config)

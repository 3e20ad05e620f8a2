"""DPO with images under sequence parallelism: a tiny Qwen2.5-VL scoring preference pairs whose
prompts hold images reproduces the one-process run at SP=2 (losses 1e-5 relative, gradients 1e-4);
the frozen reference copy encodes the images the same split way."""

from __future__ import annotations

import pytest

from ..launcher import run_ranks
from ..media_fixtures import write_media_dataset, write_vision_model
from .harness import parallel_keys, run_training
from .test_sequence_parallel import compare

STEPS = 2


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-dpo")
    return write_vision_model(root / "model"), write_media_dataset(root / "data", videos=False)


def _train(rank, world_size, keys):
    result = run_training(**keys)
    return result if rank == 0 else None


@pytest.mark.parametrize(
    "finetuning",
    [
        pytest.param({"finetuning_type": "full", "freeze_vision_tower": False}, id="full-vision-trainable"),
        pytest.param({"finetuning_type": "lora"}, id="lora", marks=pytest.mark.slow),
    ],
)
def test_dpo_with_images_at_sp2_matches_one_process(media, tmp_path, finetuning):
    model, data = media
    keys = {
        "model_name_or_path": str(model),
        "stage": "dpo",
        "template": "qwen2_vl",
        "dataset": "media_pairs",
        "dataset_dir": str(data),
        "cutoff_len": 256,
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,
        "pref_beta": 0.1,
        **finetuning,
    }
    reference = run_training(**keys, output_dir=str(tmp_path / "ref"))
    candidate = run_ranks(_train, 2, {**keys, **parallel_keys(2, "ulysses"), "output_dir": str(tmp_path / "sp")})[0]
    compare(reference, candidate, steps=STEPS)
    # the chosen-over-rejected margin moves: the images reach the loss
    assert reference["metrics"].get("rewards/margins") is not None

"""Images and video under sequence parallelism: a tiny Qwen2.5-VL trained on image and video rows at
SP = 2 and 4 reproduces the one-process run (losses 1e-5 relative, gradients 1e-4), with the vision
tower trainable (its gradient crosses the features' gather) or frozen, packed or not, with
gradient checkpointing, accumulation and DP x SP."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..launcher import run_ranks
from ..media_fixtures import write_media_dataset, write_vision_model
from .harness import expected_layout, parallel_keys, run_training
from .test_sequence_parallel import compare

pytest.importorskip("av")

STEPS = 3


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return write_vision_model(root / "model"), write_media_dataset(root / "data")


def _train(rank, world_size, keys):
    result = run_training(**keys)
    return result if rank == 0 else None


def _keys(media, tmp_path, name, **keys):
    model, data = media
    base = {
        "model_name_or_path": str(model),
        "template": "qwen2_vl",
        "dataset": "media_demo",
        "dataset_dir": str(data),
        "cutoff_len": 256,
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,
        "output_dir": str(tmp_path / name),
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
    }
    return {**base, **keys}


def _compare(reference, candidate):
    compare(reference, candidate, steps=STEPS)


CASES = [
    # (world, keys): every mode `auto` can pick, packing, checkpointing, accumulation, DP x SP
    pytest.param(2, parallel_keys(2, "ulysses"), id="sp2-ulysses-full-vision-trainable"),
    pytest.param(
        2,
        {**parallel_keys(2, "zigzag-ring"), "neat_packing": True, "gradient_checkpointing": True},
        id="sp2-ring-packed-checkpointed",
    ),
    pytest.param(
        4,
        {**parallel_keys(4, "hybrid"), "gradient_accumulation_steps": 2, "per_device_train_batch_size": 1},
        id="sp4-hybrid-accumulation",
        marks=pytest.mark.slow,
    ),
    pytest.param(
        4,
        {**parallel_keys(2, "ulysses"), "per_device_train_batch_size": 1, "finetuning_type": "lora"},
        id="dp2-sp2-lora-vision-frozen",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize(("world", "keys"), CASES)
def test_vision_language_sft_under_sequence_parallelism_matches_one_process(media, tmp_path, world, keys):
    shared = {
        k: v
        for k, v in keys.items()
        if not k.startswith("sequence_parallel") and k not in ("per_device_train_batch_size", "ulysses_degree")
    }
    if keys.get("finetuning_type") == "lora":
        shared.update(freeze_vision_tower=True, freeze_multi_modal_projector=True)
        keys = {**keys, "freeze_vision_tower": True, "freeze_multi_modal_projector": True}
    dp = world // keys["sequence_parallel_size"]
    batch = keys.get("per_device_train_batch_size", 2)
    reference = run_training(**_keys(media, tmp_path, "ref", per_device_train_batch_size=batch * dp, **shared))
    candidate = run_ranks(_train, world, _keys(media, tmp_path, "sp", **keys))[0]
    _compare(reference, candidate)
    assert candidate["layout"] == expected_layout(keys["sequence_parallel_size"], keys["sequence_parallel_mode"])
    trained = set(reference["grads"][0])
    vision = {name for name in trained if ".visual." in name}
    if keys.get("finetuning_type") == "lora":
        assert not vision  # LLaMA-Factory's defaults: no adapter in the vision tower or projector
    else:
        assert any(".visual.blocks." in n for n in vision) and any(".visual.merger." in n for n in vision)


@pytest.fixture(scope="module")
def qwen3_media(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-qwen3")
    return write_vision_model(root / "model", "qwen3_vl"), write_media_dataset(root / "data")


def test_qwen3_vl_images_and_timed_videos_with_deepstack_under_sequence_parallelism_match_one_process(
    qwen3_media, tmp_path
):
    """Qwen3-VL adds vision features inside the first decoder layers (deepstack): each shard adds
    those of its own visual tokens; its videos are written a temporal patch at a time, each after
    its timestamp (text between the frames' visual tokens); SP=2 ring, packed, vision tower and
    projector trained."""
    keys = {**parallel_keys(2, "zigzag-ring"), "neat_packing": True}
    shared = {"neat_packing": True}
    base = {"template": "qwen3_vl_nothink"}
    reference = run_training(**_keys(qwen3_media, tmp_path, "ref", **base, **shared))
    candidate = run_ranks(_train, 2, _keys(qwen3_media, tmp_path, "sp", **base, **keys))[0]
    _compare(reference, candidate)
    trained = set(reference["grads"][0])
    assert any(".visual.deepstack_merger_list." in n for n in trained)


@pytest.fixture(scope="module")
def qwen3_5_media(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-qwen3-5")
    return write_vision_model(root / "model", "qwen3_5"), write_media_dataset(root / "data", videos=False)


def test_qwen3_5_images_with_gated_deltanet_layers_under_sequence_parallelism_match_one_process(
    qwen3_5_media, tmp_path
):
    """Qwen3.5's multimodal class: Gated DeltaNet layers (split over SP as for text) beside
    attention, under the Qwen3-VL-style tower; SP=2 ulysses, packed, tower trained. Loaded from a
    folder, as users load it: transformers' hub-kernel re-kernelization on train() once put the
    class forward back on those layers (gradients 1e-1 off)."""
    keys = {**parallel_keys(2, "ulysses"), "neat_packing": True}
    base = {"template": "qwen3_5_nothink"}
    reference = run_training(**_keys(qwen3_5_media, tmp_path, "ref", **base, neat_packing=True))
    candidate = run_ranks(_train, 2, _keys(qwen3_5_media, tmp_path, "sp", **base, **keys))[0]
    _compare(reference, candidate)
    assert any(".visual.blocks." in n for n in reference["grads"][0])


LF_DATA = Path(__file__).resolve().parents[3] / "shared" / "lf-data"
QWEN_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "lf-golden" / "tokenizers" / "qwen2.5"


@pytest.mark.slow
@pytest.mark.skipif(not (LF_DATA.is_dir() and QWEN_TOKENIZER.is_dir()), reason="../shared not present")
@pytest.mark.parametrize(
    ("arch", "template", "sp", "mode"),
    [("qwen2_5_vl", "qwen2_vl", 2, "ulysses"), ("qwen3_vl", "qwen3_vl_nothink", 4, "hybrid")],
)
def test_llamafactory_image_and_video_demos_under_sequence_parallelism_match_one_process(
    tmp_path, arch, template, sp, mode
):
    """LLaMA-Factory's own demo rows (three images, three videos at its default pixel and frame
    limits), a tiny Qwen2.5-VL (SP=2) or Qwen3-VL (timed video frames, SP=4 hybrid) with the real
    Qwen2.5 tokenizer and the real processors' bounds."""
    from transformers import AutoTokenizer

    from ulysses_pro.models.multimodal.tiny import make_tiny_vision_model

    model = make_tiny_vision_model(arch, tmp_path / "model", AutoTokenizer.from_pretrained(QWEN_TOKENIZER))
    keys = {
        "model_name_or_path": str(model),
        "template": template,
        "dataset": "mllm_demo,mllm_video_demo",
        "dataset_dir": str(LF_DATA),
        "cutoff_len": 2048,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "freeze_vision_tower": False,
    }
    reference = run_training(**keys, output_dir=str(tmp_path / "ref"))
    candidate = run_ranks(_train, sp, {**keys, **parallel_keys(sp, mode), "output_dir": str(tmp_path / "sp")})[0]
    compare(reference, candidate, steps=2)

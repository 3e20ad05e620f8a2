"""The vision-language forward of one process: the collator's batch through the hooked model equals
transformers' own Qwen2.5-VL path (its processor inputs, its get_rope_index) row by row, for images
and videos; a packed row scores each document as if it were alone."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.config import load_config
from ulysses_pro.data.collators import PaddingCollator
from ulysses_pro.data.multimodal.collator import VisionCollator
from ulysses_pro.data.multimodal.rows import vision_settings
from ulysses_pro.data.pipeline import build_datasets
from ulysses_pro.models.attention import isolate_packed_documents
from ulysses_pro.models.loader import load_tokenizer
from ulysses_pro.models.multimodal.rope import MRopePositions
from ulysses_pro.models.multimodal.vision_inputs import install_vision_inputs

from ...media_fixtures import write_media_dataset, write_vision_model

pytest.importorskip("av")


# (model, template, whether the family's videos are built)
FAMILIES = {
    "qwen2_5_vl": ("qwen2_vl", True),
    "qwen3_vl": ("qwen3_vl_nothink", True),
    "qwen3_5": ("qwen3_5_nothink", True),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def setup(request, tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    arch = request.param
    template, videos = FAMILIES[arch]
    root = tmp_path_factory.mktemp(f"vision-forward-{arch}")
    model_dir, data = write_vision_model(root / "model", arch), write_media_dataset(root / "data", videos=videos)

    def rows(**keys):
        config = load_config(
            {
                "model_name_or_path": str(model_dir),
                "template": template,
                "dataset": "media_demo",
                "dataset_dir": str(data),
                "stage": "sft",
                "do_train": True,
                "cutoff_len": 512,
                "output_dir": str(root / "out"),
                **keys,
            }
        )
        tokenizer = load_tokenizer(config.model)
        return config, tokenizer, build_datasets(config.data, tokenizer, "sft").train

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    return model, rows


def model_type(setup) -> str:
    return setup[0].config.model_type


def _collator(model, config, tokenizer):
    settings = vision_settings(config.data, tokenizer)
    return VisionCollator(
        PaddingCollator(tokenizer.pad_token_id),
        settings.pixel_reader(),
        MRopePositions(model.config),
        model.config.image_token_id,
        model.config.video_token_id,
    ), settings.pixel_reader()


def _transformers_logits(model, row, reader) -> torch.Tensor:
    """One row the way transformers' own Qwen2.5-VL forward takes it (positions from its
    get_rope_index, features scattered by its placeholder mask)."""
    ids = torch.tensor([row["input_ids"]])
    config = model.config
    inputs = {"mm_token_type_ids": (ids == config.image_token_id).int() + 2 * (ids == config.video_token_id).int()}
    if row["images"]:
        inputs["pixel_values"] = torch.cat([reader.pixels(x) for x in row["images"]])
        inputs["image_grid_thw"] = torch.tensor([x.grid for x in row["images"]])
    if row["videos"]:
        inputs["pixel_values_videos"] = torch.cat([reader.pixels(x) for x in row["videos"]])
        inputs["video_grid_thw"] = torch.tensor([x.grid for x in row["videos"]])
        inputs["second_per_grid_ts"] = torch.tensor([x.seconds_per_grid for x in row["videos"]])
    model.model.rope_deltas = None
    return model(input_ids=ids, **inputs).logits[0]


def _hooked_logits(model, batch) -> torch.Tensor:
    batch = {k: v for k, v in batch.items() if k not in ("shift_labels", "document_lengths")}
    install_vision_inputs(model, None)
    try:
        return model(**batch, use_cache=False).logits
    finally:
        model.model._ulysses_vision_hook.remove()


def test_hooked_forward_equals_transformers_own_vision_path_for_images_and_videos(setup):
    model, rows = setup
    config, tokenizer, dataset = rows()
    collate, reader = _collator(model, config, tokenizer)
    examples = [dataset[i] for i in range(len(dataset))]
    assert any(r["images"] for r in examples)
    assert any(r["videos"] for r in examples) == FAMILIES[model.config.model_type][1]
    with torch.no_grad():
        ours = _hooked_logits(model, collate(examples))
        for index, row in enumerate(examples):
            reference = _transformers_logits(model, row, reader)
            torch.testing.assert_close(ours[index, : len(row["input_ids"])], reference, rtol=1e-4, atol=1e-5)


def test_packed_row_scores_each_document_as_if_alone(setup):
    model, rows = setup
    config, tokenizer, packed = rows(neat_packing=True, cutoff_len=512)
    collate, reader = _collator(model, config, tokenizer)
    isolate_packed_documents(model)  # what training does at SP=1 with packing (Qwen3.5's recurrent layers)
    row = packed[0]
    assert len(row["document_lengths"]) > 2 and row["images"]
    with torch.no_grad():
        logits = _hooked_logits(model, collate([row]))[0]
        start = used_images = used_videos = 0
        for length in row["document_lengths"]:
            ids = row["input_ids"][start : start + length]
            images = sum(1 for i, t in enumerate(ids) if t == model.config.image_token_id and (i == 0 or ids[i - 1] != t))
            runs = sum(1 for i, t in enumerate(ids) if t == model.config.video_token_id and (i == 0 or ids[i - 1] != t))
            videos = 0
            while runs > 0:  # a timed video (Qwen3-VL) is one run per temporal patch
                runs -= row["videos"][used_videos + videos].token_runs
                videos += 1
            alone = {
                "input_ids": ids,
                "images": row["images"][used_images : used_images + images],
                "videos": row["videos"][used_videos : used_videos + videos],
            }
            torch.testing.assert_close(
                logits[start : start + length], _transformers_logits(model, alone, reader), rtol=1e-4, atol=1e-5
            )
            start, used_images, used_videos = start + length, used_images + images, used_videos + videos


def test_video_patches_take_each_frame_pair_in_the_image_processors_patch_order(setup, tmp_path):
    if model_type(setup) != "qwen2_5_vl":
        pytest.skip("the patch layout is the reader's, checked once")
    """A video of one repeated frame is, patch for patch, that frame as an image (which the image
    processor copies over the temporal patch): the spatial order and the (C, T, P, P) layout agree."""
    from PIL import Image

    from ulysses_pro.data.multimodal.qwen_vl import VisualInput

    from ...media_fixtures import write_video

    model, rows = setup
    config, tokenizer, _ = rows()
    _, reader = _collator(model, config, tokenizer)
    write_video(tmp_path / "still.mp4", frames=2, fps=1, size=(56, 84), seed=3)
    import av

    with av.open(str(tmp_path / "still.mp4")) as container:
        first = next(container.decode(video=0)).to_image()
    first.save(tmp_path / "first.png")
    video = VisualInput("video", str(tmp_path / "still.mp4"), (56, 84), (1, 6, 4), frames=(0, 0), seconds_per_grid=1.0)
    reader.image_geometry = reader.video_geometry  # the same bounds for both
    reader.__post_init__()
    image = VisualInput("image", str(tmp_path / "first.png"), (56, 84), (1, 6, 4))
    assert Image.open(tmp_path / "first.png").size == (56, 84)
    torch.testing.assert_close(reader.pixels(video), reader.pixels(image))


def test_a_videos_temporal_groups_encode_as_the_whole_video(setup):
    """What lets one long video be split over the SP group: the tower encodes each pair of frames
    on its own (attention within a temporal patch, positions by height and width)."""
    model = setup[0]
    visual = model.model.visual
    t, h, w = 3, 8, 12
    pixels = torch.randn(t * h * w, 3 * 2 * visual.config.patch_size**2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = visual(pixels, grid_thw=torch.tensor([[t, h, w]]))
        groups = visual(pixels, grid_thw=torch.tensor([[1, h, w]] * t))
    torch.testing.assert_close(groups.pooler_output, whole.pooler_output, rtol=0, atol=1e-6)
    for apart, together in zip(getattr(groups, "deepstack_features", None) or [], getattr(whole, "deepstack_features", None) or []):
        torch.testing.assert_close(apart, together, rtol=0, atol=1e-6)

"""A vision-language step on the device: the tiny Qwen2.5-VL's image batch through the vision hook and
the SP attention (one rank), bf16 autocast, against the same step in fp32 on the CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .common import device_of, max_rel, section


def _step(model_dir: Path, data: Path, device: torch.device, bf16: bool):
    from transformers import AutoModelForImageTextToText

    from ulysses_pro.config import load_config
    from ulysses_pro.data.collators import PaddingCollator
    from ulysses_pro.data.multimodal.collator import VisionCollator
    from ulysses_pro.data.multimodal.rows import vision_settings
    from ulysses_pro.data.pipeline import build_datasets
    from ulysses_pro.models.attention import apply_sequence_parallel, attention_heads
    from ulysses_pro.models.loader import load_tokenizer
    from ulysses_pro.models.multimodal.rope import MRopePositions
    from ulysses_pro.models.multimodal.vision_inputs import install_vision_inputs
    from ulysses_pro.parallel import destroy_sequence_parallel, init_sequence_parallel

    config = load_config(
        {
            "model_name_or_path": str(model_dir),
            "template": "qwen2_vl",
            "dataset": "media_demo",
            "dataset_dir": str(data),
            "stage": "sft",
            "do_train": True,
            "cutoff_len": 512,
            "neat_packing": True,
            "output_dir": str(data / "out"),
        }
    )
    tokenizer = load_tokenizer(config.model)
    rows = build_datasets(config.data, tokenizer, "sft").train
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
    model.config.use_cache = False
    heads, kv_heads = attention_heads(model)
    layout = init_sequence_parallel(1, "ulysses", num_heads=heads, num_kv_heads=kv_heads)
    apply_sequence_parallel(model, layout)
    install_vision_inputs(model, layout)
    settings = vision_settings(config.data, tokenizer)
    collate = VisionCollator(
        PaddingCollator(tokenizer.pad_token_id),
        settings.pixel_reader(),
        MRopePositions(model.config),
        model.config.image_token_id,
        model.config.video_token_id,
    )
    batch = {k: v.to(device) for k, v in collate([rows[i] for i in range(len(rows))]).items()}
    labels = batch.pop("shift_labels")
    batch.pop("document_lengths", None)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
    finally:
        destroy_sequence_parallel(layout)
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


@section("vision-language step (Qwen2.5-VL, images, packed, SP attention)")
def check_vision_step(args):
    from tests.media_fixtures import write_media_dataset, write_vision_model

    device = device_of(args)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model_dir = write_vision_model(root / "model")
        data = write_media_dataset(root / "data", videos=False)
        loss, grads = _step(model_dir, data, device, bf16=True)
        reference_loss, reference_grads = _step(model_dir, data, torch.device("cpu"), bf16=False)
    grad_error = max(max_rel(grads[n], reference_grads[n]) for n in reference_grads)
    out = {"loss": round(loss, 5), "fp32_cpu_loss": round(reference_loss, 5), "max_grad_rel": grad_error}
    if abs(loss - reference_loss) / reference_loss > 2e-2 or grad_error > 0.1:
        out["status"] = "FAIL"
    return out


SECTIONS = [check_vision_step]

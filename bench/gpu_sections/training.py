"""bf16 SFT steps on CUDA against fp32 on the CPU, and FSDP2 driven by Ulysses Pro at world size 1."""

from __future__ import annotations

import tempfile

from .common import ROOT, section


def _train(keys: dict) -> list[float]:
    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    base = {
        "model_name_or_path": "tiny:llama?hidden_size=256&num_layers=4&num_heads=8&num_kv_heads=2",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "demo_chat",
        "dataset_dir": str(ROOT / "data"),
        "cutoff_len": 256,
        "max_samples": 32,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "max_grad_norm": 0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "overwrite_output_dir": True,
        "output_dir": tempfile.mkdtemp(prefix="gpu-check-"),
    }
    trainer = run_stage(load_config({**base, **keys}))
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@section("bf16 SFT on CUDA against fp32 on the CPU")
def check_sft(args):
    if args.cpu_dry_run:
        gpu = _train({"use_cpu": True, "bf16": True, "max_steps": 2})
        cpu = _train({"use_cpu": True, "max_steps": 2})
    else:
        gpu = _train({"bf16": True})
        cpu = _train({"use_cpu": True})
    worst = max(abs(a - b) / abs(b) for a, b in zip(gpu, cpu))
    return {
        "losses bf16": gpu,
        "losses fp32 cpu": cpu,
        "max_rel": worst,
        "status": "PASS" if worst < 2e-2 else "FAIL",
    }


@section("FSDP2 driven by Ulysses Pro, world size 1, bf16 with fp32 masters")
def check_fsdp(args):
    from transformers import TrainerCallback

    seen = {}

    class Inspect(TrainerCallback):
        def on_step_end(self, args_, state, control, model=None, **kwargs):
            from torch.distributed.tensor import DTensor

            seen["dtensor_params"] = all(isinstance(p, DTensor) for p in model.parameters())
            seen["master_dtypes"] = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})

    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    device = {"use_cpu": True, "max_steps": 2} if args.cpu_dry_run else {}
    plain = _train({"bf16": True, **device})
    base = dict(
        model_name_or_path="tiny:llama?hidden_size=256&num_layers=4&num_heads=8&num_kv_heads=2",
        stage="sft", do_train=True, finetuning_type="full", dataset="demo_chat", dataset_dir=str(ROOT / "data"),
        cutoff_len=256, max_samples=32, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        max_grad_norm=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        overwrite_output_dir=True, output_dir=tempfile.mkdtemp(prefix="gpu-check-fsdp-"),
    )  # fmt: skip
    keys = {"bf16": True, "fsdp": "full_shard", **device}
    trainer = run_stage(load_config({**base, **keys}), callbacks=[Inspect()])
    fsdp = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    worst = max(abs(a - b) / abs(b) for a, b in zip(fsdp, plain))
    ok = (
        trainer.sharded_by_fsdp2
        and seen.get("dtensor_params")
        and seen.get("master_dtypes") == ["torch.float32"]
    )
    return {
        "sharded_by_fsdp2": trainer.sharded_by_fsdp2,
        **seen,
        "losses": fsdp,
        "max_rel_vs_plain": worst,
        "status": "PASS" if ok and worst < 2e-2 else "FAIL",
    }

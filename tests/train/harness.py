"""Train a few steps through the real config -> data -> model -> trainer path and record
per-step losses and the gradients the optimizer receives (after DDP averaging)."""

from __future__ import annotations

from transformers import TrainerCallback

from ulysses_pro.config import load_config
from ulysses_pro.train.stages import run_stage

# A DeepSpeed ZeRO-3 config whose sizes the Trainer fills in ("auto"), for the ZeRO-3 tests and benches.
ZERO3 = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "zero_optimization": {"stage": 3, "overlap_comm": False},
}


class CaptureGradients(TrainerCallback):
    """Copies gradients right before each optimizer step."""

    def __init__(self):
        self.steps: list[dict] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: _whole(p.grad) for n, p in model.named_parameters() if p.grad is not None})


def _whole(grad):
    """A gradient as one tensor: FSDP2's shards are gathered (every rank runs the callback)."""
    if hasattr(grad, "full_tensor"):
        return grad.full_tensor().detach().clone()
    return grad.detach().clone()


def training_config(**keys):
    """The RunConfig of a short logged run on a tiny model: these keys over the harness defaults."""
    base = {
        "model_name_or_path": "tiny:llama",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "cutoff_len": 128,
        "max_grad_norm": 0,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "overwrite_output_dir": True,
    }
    return load_config({**base, **keys})


def run_training(callbacks: tuple = (), **keys) -> dict:
    """Run `run_stage` on the given config keys (plus extra trainer callbacks); return per-step losses,
    gradients and eval losses."""
    capture = CaptureGradients()
    trainer = run_stage(training_config(**keys), callbacks=[capture, *callbacks])
    history = trainer.state.log_history
    return {
        "losses": [entry["loss"] for entry in history if "loss" in entry],
        "grads": capture.steps,
        "eval_losses": [entry["eval_loss"] for entry in history if "eval_loss" in entry],
        # the last per-step training log line (loss, learning rate, rewards/*, guard/*, ...)
        "metrics": [entry for entry in history if "loss" in entry][-1],
        "logged": [entry for entry in history if "loss" in entry],  # every training log line
        "eval_metrics": next((entry for entry in reversed(history) if "eval_loss" in entry), {}),
        # (ulysses degree, ring degree) the run really used, so a test can say what it ran
        "layout": (layout.ulysses_size, layout.ring_size) if (layout := trainer.sp_layout) else (1, 1),
    }


# What each mode must split into; a hybrid case is a real ulysses x ring split, never the
# pure-Ulysses layout the default degree picks when the heads allow it.
def expected_layout(sp: int, mode: str) -> tuple[int, int]:
    """(ulysses degree, ring degree) of an SP=`sp` case in `mode` (see `parallel_keys`)."""
    return {"ulysses": (sp, 1), "zigzag-ring": (1, sp), "hybrid": (2, sp // 2)}[mode]


def parallel_keys(sp: int, mode: str) -> dict:
    """The SP config keys of a case; hybrid sets `ulysses_degree: 2` and needs sp >= 4."""
    if mode == "hybrid" and sp < 4:
        raise ValueError(
            f"a hybrid case needs sequence_parallel_size >= 4 (got {sp}): 2 ranks cannot split both ways"
        )
    degree = {"ulysses_degree": 2} if mode == "hybrid" else {}
    return {"sequence_parallel_size": sp, "sequence_parallel_mode": mode, **degree}


def relative_error(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all parameters."""
    assert a.keys() == b.keys()
    num = sum((a[k] - b[k]).pow(2).sum() for k in a).sqrt()
    return float(num / sum(a[k].pow(2).sum() for k in a).sqrt())

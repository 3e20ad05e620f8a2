"""The family sweep: a tiny random model of one decoder family, SP=2 `auto` against one process.

`family_outcome(family, out_dir)` returns what happened, as the support matrix reports it:
- "refused": preflight refuses SP for the family before any data or weight loads (its message);
- "exact": SFT on packed rows, 3 optimizer steps, per-step losses within 1e-6 relative and
  gradients within 1e-4 of one process, plus, at SP=1, a packed row giving every document the
  logits it gets alone (checked for every family: attention reads documents from position ids,
  recurrent layers from the mixer context);
- "wrong" / "crash": what must never happen (the numbers, or the error's last line).
Used by tests/train/test_family_sweep.py and scripts/family_matrix.py (which writes
docs/families.md and src/ulysses_pro/models/family_status.json).
"""

from __future__ import annotations

import os
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ulysses_pro.config import ConfigError
from ulysses_pro.models.attention import isolate_packed_documents
from ulysses_pro.models.families import VERIFYING_ENV
from ulysses_pro.models.loader import load_model_config
from ulysses_pro.models.tiny import build_tiny_model
from ulysses_pro.train.preflight import check_model

from ..launcher import run_ranks
from .harness import relative_error, run_training, training_config

DATA = str(Path(__file__).resolve().parents[2] / "data")
STEPS = 3
LOSS_TOLERANCE = 1e-6  # exact families land near 1e-7; a leaking short convolution shows at 2e-6
GRAD_TOLERANCE = 1e-4
PACKED_TOLERANCE = 1e-4  # packed-vs-alone logits, relative to their largest value


@dataclass
class Outcome:
    family: str
    status: str  # exact | refused | wrong | crash
    layout: str = ""  # what auto chose, e.g. "ulysses 2"
    loss_error: float | None = None
    grad_error: float | None = None
    packed_error: float | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def sweep_keys(family: str, out_dir: Path, name: str, **keys) -> dict:
    return {
        "model_name_or_path": f"tiny:{family}",
        "dataset": "demo_chat",
        "dataset_dir": DATA,
        "max_samples": 24,
        "max_steps": STEPS,
        "per_device_train_batch_size": 4,
        "cutoff_len": 96,
        "neat_packing": True,
        # A tenth of the harness default: over 3 steps rounding differences stay rounding differences
        # (at 1e-3 Gemma 4's gradients drift from 2e-6 at step 1 to 1.5e-4 at step 3, losses still 1e-7).
        "learning_rate": 1e-4,
        "output_dir": str(out_dir / name),
        **keys,
    }


def _train(rank, world_size, keys, verifying=False, family=None):
    """One run in fresh processes (families differ wildly in what they leave in memory); with
    `family`, also the packed-vs-alone check, in the same process."""
    if verifying:
        os.environ[VERIFYING_ENV] = "1"
    try:
        result = run_training(**keys)
        if family is not None:
            result["packed_error"] = packed_error(family)
    except Exception:  # noqa: BLE001  (a crash is an outcome the sweep reports)
        return ("crash", traceback.format_exc())
    return ("ok", result) if rank == 0 else None


def _packed(rank, world_size, family):
    try:
        return packed_error(family)
    except Exception:  # noqa: BLE001  (a family that cannot even run at SP=1: nothing to record)
        return None


def refusal(family: str, out_dir: Path, sp: int = 2, *, verifying: bool = False) -> str | None:
    """Preflight's message when it refuses the family at SP=`sp` (None: it accepts). `verifying`:
    as the sweep measures a family, without the list of families already measured exact."""
    config = training_config(**sweep_keys(family, out_dir, "preflight", sequence_parallel_size=sp))
    previous = os.environ.pop(VERIFYING_ENV, None)
    if verifying:
        os.environ[VERIFYING_ENV] = "1"
    try:
        model_config = load_model_config(config.model)
    except Exception:  # noqa: BLE001  (no tiny config: a user's own config.json meets the same checks)
        from transformers import AutoConfig

        model_config = AutoConfig.for_model(family)
    try:
        check_model(config, model_config, world_size=sp)
    except ConfigError as err:
        return str(err)
    finally:
        os.environ.pop(VERIFYING_ENV, None)
        if previous is not None:
            os.environ[VERIFYING_ENV] = previous
    return None


def packed_error(family: str) -> float:
    """Largest |packed - alone| logit over the largest logit, at SP=1 with documents isolated."""
    model = build_tiny_model(family)
    isolate_packed_documents(model)
    lengths = [23, 37, 30]
    generator = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, 500, (1, n), generator=generator) for n in lengths]
    with torch.no_grad():
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        packed = model(input_ids=torch.cat(docs, dim=1), position_ids=positions, use_cache=False).logits
        alone = torch.cat(
            [
                model(input_ids=d, position_ids=torch.arange(d.shape[1])[None], use_cache=False).logits
                for d in docs
            ],
            dim=1,
        )
    return float((packed - alone).abs().max() / alone.abs().max())


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def family_outcome(family: str, out_dir: Path, sp: int = 2, *, verifying: bool = True) -> Outcome:
    """Run the sweep for one family (see the module docstring). `verifying`: measure it even if it
    is not (yet) among the families recorded exact; the mechanism refusals still apply."""
    message = refusal(family, out_dir, sp, verifying=verifying)
    if message is not None:
        # Measured for the record: preflight refuses packing where it leaks (family_status.json).
        return Outcome(family, "refused", detail=message, packed_error=run_ranks(_packed, 1, family)[0])
    status, reference = run_ranks(_train, 1, sweep_keys(family, out_dir, "ref"), verifying, family)[0]
    if status == "crash":
        return Outcome(family, "crash", detail=f"SP=1: {_last_line(reference)}")
    status, result = run_ranks(
        _train, sp, sweep_keys(family, out_dir, "sp", sequence_parallel_size=sp), verifying
    )[0]
    if status == "crash":
        return Outcome(family, "crash", detail=f"SP={sp}: {_last_line(result)}")
    ulysses, ring = result["layout"]
    layout = (
        f"ulysses {ulysses}"
        if ring == 1
        else f"ring {ring}"
        if ulysses == 1
        else f"ulysses {ulysses} x ring {ring}"
    )
    loss_error = max(abs(a - b) / abs(a) for a, b in zip(reference["losses"], result["losses"]))
    grad_error = max(relative_error(a, b) for a, b in zip(reference["grads"], result["grads"]))
    packed = reference["packed_error"]
    exact = loss_error <= LOSS_TOLERANCE and grad_error <= GRAD_TOLERANCE and packed <= PACKED_TOLERANCE
    steps_ok = len(reference["losses"]) == len(result["losses"]) == STEPS
    return Outcome(
        family,
        "exact" if exact and steps_ok else "wrong",
        layout=layout,
        loss_error=loss_error,
        grad_error=grad_error,
        packed_error=packed,
    )

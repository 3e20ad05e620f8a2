"""What every section shares: the section runner (status, timing, results), the device, errors."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS: dict[str, dict] = {}
START = time.perf_counter()  # the memory scan's time budget counts from the script's start


class Skip(Exception):
    """A section that does not apply here (no such device or backend)."""


def section(name: str):
    """Run a check as a section: its outcome dict (a "status" key overrides PASS) goes to RESULTS;
    a Skip is SKIP, any other exception FAIL with its trace; the next section runs either way."""

    def run(function):
        def wrapped(args):
            started = time.perf_counter()
            try:
                outcome = function(args) or {}
                status = outcome.pop("status", "PASS")
            except Skip as skip:
                status, outcome = "SKIP", {"why": str(skip)}
            except Exception as error:  # report and carry on with the other sections
                status, outcome = (
                    "FAIL",
                    {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()},
                )
            outcome["seconds"] = round(time.perf_counter() - started, 1)
            RESULTS[name] = {"status": status, **outcome}
            shown = {k: v for k, v in outcome.items() if k != "trace"}
            print(f"[{status}] {name}: {json.dumps(shown, default=str)}", flush=True)
            if "trace" in outcome:
                print(outcome["trace"], flush=True)

        wrapped.section_name = name
        return wrapped

    return run


def device_of(args) -> torch.device:
    return torch.device("cpu") if args.cpu_dry_run else torch.device("cuda")


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))

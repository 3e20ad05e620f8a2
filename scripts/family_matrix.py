"""Run the family sweep over every causal-LM family transformers registers and write the support matrix.

    python scripts/family_matrix.py [--families qwen3_5_text gpt_oss ...] [--fresh]

For each text-decoder family (multimodal wrappers are swept through their text model type), a tiny
random model trains 3 SFT steps on packed rows at SP=2 `auto` against one process
(tests/train/family_sweep.py). Results go to
- src/ulysses_pro/models/family_status.json: the families measured exact (preflight accepts SP
  only for those; everything else is refused by name), with their numbers;
- docs/families.md: the matrix (family, the layout `auto` chose, status, max relative differences).
Each family's result is saved as soon as it is measured, so an interrupted run resumes where it
stopped (`--fresh` starts over). Takes about 30 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.train.family_sweep import PACKED_TOLERANCE, family_outcome  # noqa: E402
from ulysses_pro.models.families import NOT_DECODERS, STATUS_FILE, text_model_type  # noqa: E402
from ulysses_pro.models.tiny_families import causal_lm_model_types  # noqa: E402

RESULTS = REPO / "bench" / "results" / "family_sweep.json"
MATRIX = REPO / "docs" / "families.md"


def swept_families() -> tuple[list[str], dict[str, str]]:
    """(families to sweep, wrappers -> the text family that stands for them)."""
    registered = causal_lm_model_types()
    families, wrappers = [], {}
    for kind in sorted(registered):
        if kind in NOT_DECODERS:
            continue
        text = text_model_type(kind)
        if text != kind and text in registered:
            wrappers[kind] = text
        else:
            families.append(kind)
    return families, wrappers


def _number(value) -> str:
    return "" if value is None else f"{value:.1e}"


def write_matrix(results: dict, wrappers: dict[str, str]) -> None:
    import transformers

    counts: dict[str, int] = {}
    for outcome in results.values():
        counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
    exact = counts.get("exact", 0)
    lines = [
        "# Decoder families under sequence parallelism",
        "",
        f"Written by `python scripts/family_matrix.py` (transformers {transformers.__version__}): a tiny random",
        "model of each family (its own config class, hidden 64, 4 layers, every layer kind it mixes),",
        "3 SFT steps on packed rows at SP=2 `auto` against one process, fp32. *exact*: losses within",
        "1e-6 and gradients within 1e-4 relative, and at SP=1 a packed document's logits equal the",
        "document alone. *refused*: preflight stops the run before data and weights load, with the",
        "reason below. Only families measured exact train under SP; the rest are refused by name.",
        "",
        f"Summary: {exact} exact, {len(results) - exact} refused by name (measured: "
        + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()) if status != "exact")
        + "). *wrong* and *crash* are what the SP run would have done without the refusal.",
        "",
        "| family | layout `auto` chose | status | loss rel. diff | grad rel. diff | packed vs alone | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for family in sorted(results):
        outcome = results[family]
        note = outcome["detail"].replace("|", "/").split("sequence_parallel_size: 2: ", 1)[-1]
        status = outcome["status"]
        if status not in ("exact", "refused"):
            # What a user meets is a refusal by name (the family is not on the measured-exact list);
            # the note says what the measurement found.
            note = f"measured {status}" + (f": {note}" if note else "")
            status = "refused"
        lines.append(
            f"| {family} | {outcome['layout']} | {status} | {_number(outcome['loss_error'])} | "
            f"{_number(outcome['grad_error'])} | {_number(outcome['packed_error'])} | {note} |"
        )
    lines += ["", "Multimodal wrappers follow their text model type:", ""]
    lines += [f"- {wrapper}: as {text}" for wrapper, text in sorted(wrappers.items())]
    lines += ["", "Not decoders (refused): " + ", ".join(sorted(NOT_DECODERS)) + "."]
    MATRIX.write_text("\n".join(lines) + "\n")


def write_status(results: dict) -> None:
    exact = {
        family: {k: outcome[k] for k in ("layout", "loss_error", "grad_error", "packed_error")}
        for family, outcome in sorted(results.items())
        if outcome["status"] == "exact"
    }
    leaks = {
        family: outcome["packed_error"]
        for family, outcome in sorted(results.items())
        if outcome["packed_error"] is not None and outcome["packed_error"] > PACKED_TOLERANCE
    }
    status = {"exact": exact, "packing_leaks": leaks}
    STATUS_FILE.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")


def _blank(family: str, status: str, detail: str) -> dict:
    return {"family": family, "status": status, "layout": "", "loss_error": None, "grad_error": None,
            "packed_error": None, "detail": detail}  # fmt: skip


def measure_one(family: str, scratch: Path, out: Path) -> None:
    """`--one`: measure a family in this process and write its outcome to `out`."""
    try:
        outcome = family_outcome(family, scratch / family).as_dict()
    except Exception as err:  # noqa: BLE001  (e.g. a tiny config the family rejects)
        outcome = _blank(family, "unbuilt", str(err).splitlines()[0][:200] if str(err) else repr(err))
    out.write_text(json.dumps(outcome))


def measure(family: str, scratch: Path, limit: float) -> dict:
    """A family in a process of its own (what one family leaves in memory cannot grow the next), bounded
    in time (a family whose tiny model hangs is reported, not waited for)."""
    out = scratch / f"{family}.json"
    command = [sys.executable, __file__, "--one", family, "--scratch", str(scratch), "--out", str(out)]
    try:
        subprocess.run(
            command, timeout=limit, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return _blank(family, "timeout", f"no result in {limit:.0f} s")
    if not out.exists():
        return _blank(family, "crash", "the measuring process died (out of memory?)")
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", help="only these (default: every registered family)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--limit", type=float, default=300, help="seconds per family")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        measure_one(options.one, options.scratch, options.out)
        return 0
    families, wrappers = swept_families()
    results = {} if options.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    results = {family: outcome for family, outcome in results.items() if family not in wrappers}
    # A wrapper (Llama 4's multimodal class) is measured as the text family that stands for it.
    todo = list(dict.fromkeys(wrappers.get(f, f) for f in options.families or []))
    todo = todo or [f for f in families if f not in results]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for index, family in enumerate(todo, 1):
            started = time.perf_counter()
            outcome = measure(family, Path(scratch), options.limit)
            results[family] = outcome
            RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            print(f"[{index}/{len(todo)}] {family}: {outcome['status']} {outcome['detail'][:120]} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)  # fmt: skip
    write_matrix(results, wrappers)
    write_status(results)
    print(f"wrote {MATRIX.relative_to(REPO)} and {STATUS_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

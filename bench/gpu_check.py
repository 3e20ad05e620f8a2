"""The GPU check: run it at once whenever a CUDA GPU is at hand (one H100/H200: under 8 minutes).

    PYTHONPATH=src python bench/gpu_check.py [--budget-s 420] [--out DIR]
    python bench/gpu_check.py --cpu-dry-run        # every section at toy sizes on the CPU

On a lent machine without a package registry, run the project from `src/` and, if its
transformers / peft / accelerate are older than our pins, unpack wheels downloaded here with
`scripts/gpu_wheels.sh` (pure-Python wheels only; never build flash-attn there): this script puts
`.gpu-wheels/*.whl` (unpacked into a temporary folder) in front of `sys.path` when the folder exists.

Sections (each prints PASS / FAIL / SKIP and numbers; a failure does not stop the rest):
1. kernels: every kernel call kind (causal, full, varlen, sliding windows, soft-capping; GQA 8/2 heads)
   on CUDA in bf16 and fp32
   against an fp64 reference, forward and the two-block (ring) backward; and the flash kernels
   (torch's or flash-attn's) are the ones used for bf16;
2. varlen local attention (packed documents, SP=1 path) against per-document SDPA, values, gradients
   and time; host syncs of a model forward + backward with 1 and 3 layers (CUDA sync debug mode);
3. a few bf16 SFT steps of a tiny model on CUDA against the same steps in fp32 on the CPU;
4. FSDP2 through accelerate at world size 1 (the weights become DTensors; losses as without it);
5. the GPU path's second pass (`gpu_sections/gpu_path.py`): bf16 full fine-tuning at SP=1 and the
   frozen DPO reference run flash kernels (not the tiled reference); one PPO and one GRPO step
   (`num_iterations: 2`, a full reward model) on CUDA; a ring of 2 and 4 simulated on one GPU
   (threads exchanging in process) in bf16 with packed documents and windows against per-document
   attention; offload (bit-identical) and the tiled MLP under bf16 autocast; each flash backend's
   backward bit for bit under deterministic algorithms;
6. memory scan: a Llama-3-8B-shaped model (random bf16 weights, LoRA) with 2 and 4 layers at 64K to
   1M tokens with the whole memory stack: fixed and per-layer memory, the longest length extrapolated
   for 32 layers on this GPU (and the host memory the offloaded checkpoints need), and MFU at 32K.
Each group of sections is a module of `bench/gpu_sections/`.
One GPU cannot host two NCCL ranks, so multi-rank paths (ulysses / ring / hybrid over NCCL) are not
run here; the CPU suite proves them on gloo (tests/parallel, tests/train).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _use_carried_wheels() -> None:
    """Put the carried wheels first, but only when the machine's own transformers is older than our pin."""
    import importlib.metadata

    wheels = sorted((ROOT / ".gpu-wheels").glob("*.whl"))
    try:
        own = tuple(int(x) for x in importlib.metadata.version("transformers").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        own = (0, 0)
    if not wheels or own >= (5, 23):
        return
    target = Path(tempfile.mkdtemp(prefix="gpu-wheels-"))
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    sys.path.insert(0, str(target))
    print(f"using carried wheels: {', '.join(w.name for w in wheels)}")


_use_carried_wheels()
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_sections import gpu_path, kernels, local_attention, memory_scan, rollouts, training, vision  # noqa: E402
from gpu_sections.common import RESULTS  # noqa: E402

# In the order they run; a new section is a function in a gpu_sections module and an entry here.
SECTIONS = [
    kernels.check_environment,
    kernels.check_kernels,
    local_attention.check_local_attention,
    training.check_sft,
    training.check_fsdp,
    *gpu_path.SECTIONS,
    *vision.SECTIONS,
    rollouts.check_rollouts,
    memory_scan.check_memory_scan,  # last: it stops starting points at the time budget
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="stop starting new scan points after this"
    )
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy sizes on the CPU, to test the script")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only sections whose name holds this text (repeatable)",
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    for check in SECTIONS:
        if args.only and not any(text.lower() in check.section_name.lower() for text in args.only):
            continue
        check(args)
    print("\nsummary: " + ", ".join(f"{name}: {r['status']}" for name, r in RESULTS.items()))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))
    return 0 if all(r["status"] != "FAIL" for r in RESULTS.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

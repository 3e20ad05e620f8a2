#!/usr/bin/env bash
# Wheels for a lent GPU machine without a package registry (Python 3.12, x86_64), when its own
# transformers / peft / accelerate are older than our pins. bench/gpu_check.py unpacks
# .gpu-wheels/*.whl in front of sys.path; pass `carry: [".gpu-wheels"]` to the device run.
# Pure-Python wheels, plus the prebuilt tokenizers wheel transformers 5.24 requires (never build
# anything there, flash-attn least of all).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu-wheels && mkdir -p .gpu-wheels
pip download -q --no-deps -d .gpu-wheels transformers==5.24.0 peft==0.21.2 accelerate==1.15.0
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
    -d .gpu-wheels tokenizers==0.23.3
du -sh .gpu-wheels && ls .gpu-wheels

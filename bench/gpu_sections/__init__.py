"""The sections of bench/gpu_check.py, one module per group; each section prints PASS / FAIL / SKIP."""

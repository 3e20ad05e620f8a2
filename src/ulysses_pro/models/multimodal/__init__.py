"""Vision-language models under sequence parallelism: M-RoPE positions by the model's own rule, the
vision tower split over the SP group, tiny local models for tests."""

# Families whose vision tower, M-RoPE positions and visual tokens are wired here and measured exact
# under SP and packing (tests/train/test_vision_sft.py); the data side expands their placeholders
# with the `qwen2_vl` and `qwen3_vl` templates (Qwen3-VL: images; its videos' frame timestamps are
# not built, `data/multimodal/rows.py` refuses them).
# Qwen3.5's multimodal class is not among them: its forward equals transformers' own (tests/models/
# multimodal), but at SP=2 its losses were measured 1.5e-5 to 3.0e-5 relative off the one-process
# run, above the 1e-5 bar (tests/train/test_vision_sft.py, marked as an expected failure).
WIRED_VISION_FAMILIES = ("qwen2_5_vl", "qwen3_vl")

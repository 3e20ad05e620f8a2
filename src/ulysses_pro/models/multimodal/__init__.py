"""Vision-language models under sequence parallelism: M-RoPE positions by the model's own rule, the
vision tower split over the SP group, tiny local models for tests."""

# Families whose vision tower, M-RoPE positions and visual tokens are wired here and measured exact
# under SP and packing (tests/train/test_vision_sft.py); the data side expands their placeholders
# with the `qwen2_vl`, `qwen3_vl` and `qwen3_5` templates (Qwen3-VL / Qwen3.5 videos: a timestamp
# before each temporal patch). Qwen3.5's Gated DeltaNet layers split over SP as for text
# (`models/recurrent`).
WIRED_VISION_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_5")

"""Images and video in LLaMA-Factory's data: the media of a row's `images` / `videos` columns, and each
model family's rule for how many visual tokens a placeholder becomes (`qwen_vl.py`: Qwen2-VL,
Qwen2.5-VL).

This room reads, samples and counts; it does not yet feed a model: training on media columns is
refused by name until the vision tower runs under sequence parallelism.
"""

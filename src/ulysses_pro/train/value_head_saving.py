"""Trainers whose model carries a value head (the rm stage's scorer, PPO's critic).

A LoRA checkpoint holds adapter weights only, so the head is also written to, and read back from,
`value_head.safetensors` in every saved folder. transformers calls `_save` on every rank and writes
on the saving one only; the head follows the same rule (other ranks may not even see the folder),
after a gather every rank joins (ZeRO-3 partitions the head).
"""

from __future__ import annotations

from ..models.value_head import load_value_head, save_value_head, value_head_state


class ValueHeadSaving:
    """Mixin for a transformers Trainer subclass."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        head = value_head_state(self.model)  # every rank: under ZeRO-3 a gather
        if self.args.should_save:
            save_value_head(self.model, output_dir or self.args.output_dir, head)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_value_head(model if model is not None else self.model, resume_from_checkpoint)

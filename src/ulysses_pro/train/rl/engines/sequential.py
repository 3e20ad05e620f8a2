"""The one-prompt-at-a-time rollout engine (`rollout_engine: sequential`): one `generate` call per
prompt for its `num_generations` completions, no padding. Kept as the reference the batched engine
is measured and tested against (`bench/rollout_speed.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteriaList

from .hf_generate import RowLimits, decoding, generate_arguments, padding_id
from .settings import RolloutRequest, SamplingSettings


class SequentialGenerateEngine:
    """`model.generate` once per prompt."""

    name = "sequential"

    def __init__(
        self,
        tokenizer,
        settings: SamplingSettings,
        stop_ids: Sequence[int],
        plain_attention: str | None,
        synced_gpus: bool = False,
    ):
        self.tokenizer, self.settings, self.stop_ids = tokenizer, settings, list(stop_ids)
        self.plain_attention, self.synced_gpus = plain_attention, synced_gpus
        self.pad_id = padding_id(tokenizer, self.stop_ids)

    @torch.no_grad()
    def generate(self, model, request: RolloutRequest) -> list[list[list[int]]]:
        """Per prompt, `num_generations` completions' ids (each at most its budget)."""
        out: list[list[list[int]]] = []
        with decoding(model, self.plain_attention, request.seed) as hf_model:
            device = next(hf_model.parameters()).device
            for prompt, budget in zip(request.prompts, request.budgets):
                # The prompt repeated: what `num_return_sequences` does, and greedy decoding allows it.
                ids = torch.tensor([prompt] * request.num_generations, device=device)
                limits = RowLimits(
                    len(prompt),
                    [budget] * request.num_generations,
                    device,
                    self.tokenizer,
                    self.settings.stop,
                    self.settings.min_new_tokens,
                )
                generated = hf_model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    **generate_arguments(self.settings),
                    max_new_tokens=budget,
                    stopping_criteria=StoppingCriteriaList([limits]),
                    use_cache=True,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.stop_ids,
                    synced_gpus=self.synced_gpus,
                )
                out.append([row[len(prompt) :] for row in generated.tolist()])
        return out

"""The default rollout engine: every completion of a step from few `generate` calls.

The request's prompts, each repeated `num_generations` times (consecutive per prompt), are
decoded `batch_size` sequences at a time, left-padded to the longest prompt of their micro-batch:
with the attention mask marking the padding, transformers' `generate` derives each row's position
ids from the mask (`cumsum - 1`), so a row decodes as it would alone (greedy rows equal the
one-by-one ones token for token; `tests/train/rl/test_rollout_engines.py`). Each row stops at its
own budget (cutoff_len - its prompt's length, at most max_new_tokens) or at a stop token or
string; rows that stop early are padded while the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteriaList

from .hf_generate import RowLimits, decoding, generate_arguments, padding_id
from .settings import RolloutRequest, SamplingSettings

DEFAULT_BATCH_SIZE = 64  # sequences per `generate` call: 8 prompts x 8 completions at once


class BatchedGenerateEngine:
    """Left-padded micro-batches of `batch_size` sequences through `model.generate`."""

    name = "batched"

    def __init__(
        self,
        tokenizer,
        settings: SamplingSettings,
        stop_ids: Sequence[int],
        plain_attention: str | None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        synced_gpus: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"rollout_batch_size must be >= 1, got {batch_size}")
        self.tokenizer, self.settings, self.stop_ids = tokenizer, settings, list(stop_ids)
        self.plain_attention, self.batch_size, self.synced_gpus = plain_attention, batch_size, synced_gpus
        self.pad_id = padding_id(tokenizer, self.stop_ids)

    @torch.no_grad()
    def generate(self, model, request: RolloutRequest) -> list[list[list[int]]]:
        """Per prompt, `num_generations` completions' ids (each at most its budget; what follows a
        stop token or string is cut by the caller)."""
        rows = [
            (prompt, budget)
            for prompt, budget in zip(request.prompts, request.budgets)
            for _ in range(request.num_generations)
        ]
        completions: list[list[int]] = []
        with decoding(model, self.plain_attention, request.seed) as hf_model:
            for start in range(0, len(rows), self.batch_size):
                completions += self._decode(hf_model, rows[start : start + self.batch_size])
        n = request.num_generations
        return [completions[i : i + n] for i in range(0, len(completions), n)]

    def _decode(self, hf_model, rows: list[tuple[list[int], int]]) -> list[list[int]]:
        device = next(hf_model.parameters()).device
        width = max(len(prompt) for prompt, _ in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p, _ in rows], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in rows], device=device)
        budgets = [budget for _, budget in rows]
        limits = RowLimits(
            width, budgets, device, self.tokenizer, self.settings.stop, self.settings.min_new_tokens
        )
        generated = hf_model.generate(
            input_ids=ids,
            attention_mask=mask,
            **generate_arguments(self.settings),
            max_new_tokens=max(budgets),
            stopping_criteria=StoppingCriteriaList([limits]),
            use_cache=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.stop_ids,
            synced_gpus=self.synced_gpus,
        )
        return [row[:budget] for row, budget in zip(generated[:, width:].tolist(), budgets)]

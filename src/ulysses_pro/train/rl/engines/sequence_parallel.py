"""The long-rollout engine: completions decoded with the model sharded over the SP group
(`models.sp_decode`), so a completion is bounded by the group's memory, not one rank's.

Per prompt: its tokens but the last are prefilled under SP attention (each rank keeps its shard's
keys and values), then the `num_generations` completions are decoded together, one token per row
and step on every rank, starting from the prompt's last token; the step's attention merges the
ranks' parts of the cache, and the prompt's part is shared by the rows, never copied. Every rank of
the SP group runs every step (collectives); the tokens are drawn on the group's rank 0 and
broadcast, so the ranks agree whatever their arithmetic. Sampling follows the other engines'
processors (repetition penalty, minimum length, temperature, top-k, top-p, then a Gumbel-max draw)
with the request's seed. Rows end at a stop token, their budget or a stop string (`RowLimits`);
the call ends when every row has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from ....models.sp_decode import DECODE_NAME, ShardedKVCache, decode_attention
from ....parallel.mesh import SequenceParallelLayout
from ....parallel.sharding import pad_for_sequence_parallel, split_for_sequence_parallel
from .hf_generate import RowLimits, decoding, generate_arguments, padding_id
from .settings import RolloutRequest, SamplingSettings


class SequenceParallelDecodeEngine:
    """Decodes each prompt's completions with the KV cache split over the SP group."""

    name = "sequence_parallel"
    synced_gpus = True  # every rank of the group takes part in every step

    def __init__(
        self, tokenizer, settings: SamplingSettings, stop_ids: Sequence[int], layout: SequenceParallelLayout
    ):
        self.tokenizer, self.settings, self.stop_ids, self.layout = (
            tokenizer,
            settings,
            list(stop_ids),
            layout,
        )
        self.pad_id = padding_id(tokenizer, self.stop_ids)
        self.last_cache_bytes = 0  # the largest cache of the last call on this rank (benches read it)

    @torch.no_grad()
    def generate(self, model, request: RolloutRequest) -> list[list[list[int]]]:
        out = []
        self.last_cache_bytes = 0
        with decoding(model, None, request.seed) as hf_model:
            previous = hf_model.config._attn_implementation
            try:
                for prompt, budget in zip(request.prompts, request.budgets):
                    out.append(self._completions(hf_model, prompt, budget, request.num_generations))
            finally:
                hf_model.set_attn_implementation(previous)
        return out

    def _processors(self, prompt_length: int) -> LogitsProcessorList:
        settings = self.settings
        processors = []
        if settings.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
        if settings.min_new_tokens:
            processors.append(
                MinNewTokensLengthLogitsProcessor(prompt_length, settings.min_new_tokens, self.stop_ids)
            )
        return LogitsProcessorList(processors + list(generate_arguments(settings)["logits_processor"]))

    def _prefill(self, hf_model, prompt: list[int], cache: ShardedKVCache, device) -> None:
        layout = self.layout
        ids = torch.tensor([prompt], device=device)
        batch = {"input_ids": ids, "position_ids": torch.arange(len(prompt), device=device)[None]}
        batch = pad_for_sequence_parallel(batch, layout.split_unit, self.pad_id)
        local = split_for_sequence_parallel(
            batch, layout.ulysses_size, layout.ring_size, layout.ulysses_rank, layout.ring_rank
        )
        hf_model(**local, use_cache=False, logits_to_keep=1)

    def _completions(self, hf_model, prompt: list[int], budget: int, rows: int) -> list[list[int]]:
        from transformers import AttentionInterface

        device = next(hf_model.parameters()).device
        cache = ShardedKVCache(self.layout, len(prompt) - 1)
        AttentionInterface.register(DECODE_NAME, decode_attention(self.layout, cache))
        hf_model.set_attn_implementation(DECODE_NAME)
        if len(prompt) > 1:
            self._prefill(hf_model, prompt[:-1], cache, device)
        cache.start_decoding(rows, budget)
        processors = self._processors(len(prompt))
        limits = RowLimits(
            len(prompt),
            [budget] * rows,
            device,
            self.tokenizer,
            self.settings.stop,
            self.settings.min_new_tokens,
        )
        sequences = torch.tensor([prompt] * rows, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        stops = torch.tensor(self.stop_ids, device=device)
        for step in range(budget):
            position = torch.full((rows, 1), len(prompt) - 1 + step, device=device)
            logits = hf_model(input_ids=sequences[:, -1:], position_ids=position, use_cache=False).logits[
                :, -1
            ]
            scores = processors(sequences, logits.float())
            chosen = scores.argmax(dim=-1)
            if self.layout.sp_group is not None:
                dist.broadcast(
                    chosen, src=dist.get_global_rank(self.layout.sp_group, 0), group=self.layout.sp_group
                )
            chosen = torch.where(finished, torch.full_like(chosen, self.pad_id), chosen)
            sequences = torch.cat([sequences, chosen[:, None]], dim=1)
            cache.advance()
            finished |= torch.isin(chosen, stops) | limits(sequences, scores)
            if bool(finished.all()):
                break
        self.last_cache_bytes = max(self.last_cache_bytes, cache.bytes())
        return [row[len(prompt) :] for row in sequences.tolist()]

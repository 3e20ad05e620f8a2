"""What the engines built on transformers' `generate` share: the model set up for decoding, the
decoding arguments, and the stopping rule that ends each row at its own budget or stop string.

Generation runs without sequence parallelism (the model's plain attention, KV cache on), in eval
mode, under a forked RNG seeded per call: the run's own random state is left as it was, and the
same request samples the same completions whenever it is made (a resumed run included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ....models.attention import unsharded_attention
from ....models.wrappers import unwrap_model
from ..stop_strings import completed_by_last_token
from .settings import SamplingSettings

# Tokens decoded at a row's end to look for a stop string, beyond the longest string's characters.
STOP_TAIL_MARGIN = 8


@contextlib.contextmanager
def decoding(model, plain_attention: str | None, seed: int) -> Iterator[torch.nn.Module]:
    """The Hugging Face model in eval mode with plain attention and a seeded, forked RNG."""
    hf_model = unwrap_model(model)
    device = next(hf_model.parameters()).device
    was_training = hf_model.training
    hf_model.eval()
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            unsharded_attention(hf_model, plain_attention),
        ):
            torch.manual_seed(seed)
            yield hf_model
    finally:
        hf_model.train(was_training)


def padding_id(tokenizer, stop_ids: Sequence[int]) -> int:
    """The id rows are padded with: the tokenizer's pad token, else the first stop token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


class GumbelSampling(LogitsProcessor):
    """Adds Gumbel(0, 1) noise to the (tempered, filtered) scores, so that the argmax greedy decoding
    takes is an exact sample from their softmax (the Gumbel-max trick, Gumbel 1954; Maddison et al.
    2014). `torch.multinomial` draws the same way, as a race of exponentials, but its CPU
    exponential generator is about 6x slower than uniform draws: 40% of a 64-row decoding step of
    the tests' tiny model (bench/rollout_speed.py)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.rand_like(scores, dtype=torch.float32).clamp_(min=torch.finfo(torch.float32).tiny)
        return scores - torch.log(-torch.log(uniform)).to(scores.dtype)


def generate_arguments(settings: SamplingSettings) -> dict:
    """`model.generate`'s decoding arguments (lengths and stops are the engine's). Sampling keeps
    transformers' own order (its processors, such as the repetition penalty and the minimum length,
    then temperature, top-k, top-p) and draws with `GumbelSampling`."""
    processors: list[LogitsProcessor] = []
    if settings.do_sample:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
        processors.append(GumbelSampling())
    kwargs: dict = {"do_sample": False, "num_beams": 1, "logits_processor": LogitsProcessorList(processors)}
    if settings.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = settings.repetition_penalty
    if settings.min_new_tokens:
        kwargs["min_new_tokens"] = settings.min_new_tokens
    return kwargs


class RowLimits(StoppingCriteria):
    """Ends each row at its own token budget, or at the token that completes a stop string once
    `min_new_tokens` are out (the rule `stop_strings.cut_at_stop_string` cuts by)."""

    def __init__(
        self,
        prompt_width: int,
        budgets: Sequence[int],
        device: torch.device,
        tokenizer=None,
        stop: Sequence[str] = (),
        min_new_tokens: int = 0,
    ):
        self.prompt_width = prompt_width
        self.budgets = torch.tensor(list(budgets), device=device)
        self.tokenizer, self.stop, self.min_new_tokens = tokenizer, tuple(stop), min_new_tokens
        self.tail = max((len(s) for s in self.stop), default=0) + STOP_TAIL_MARGIN

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        produced = input_ids.shape[1] - self.prompt_width
        done = self.budgets.le(produced)
        if self.stop and produced >= max(1, self.min_new_tokens):
            rows = input_ids[:, max(self.prompt_width, input_ids.shape[1] - self.tail) :].tolist()
            hits = [
                completed_by_last_token(
                    self.tokenizer.decode(row[:-1], skip_special_tokens=True),
                    self.tokenizer.decode(row, skip_special_tokens=True),
                    self.stop,
                )
                for row in rows
            ]
            done = done | torch.tensor(hits, device=done.device)
        return done

"""The rollout engines on a tiny model: batched greedy rollouts equal one-by-one generation, sampling is
seeded, and each completion ends at its own budget, stop token or stop string (after min_new_tokens)."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.data.prompts import PromptRow
from ulysses_pro.models.tiny import build_tiny_model
from ulysses_pro.train.rl.engines import RolloutRequest, SamplingSettings, make_engine
from ulysses_pro.train.rl.engines.hf_generate import GumbelSampling
from ulysses_pro.train.rl.rollout import PolicySampler, cut_at_stop, roll_out
from ulysses_pro.train.rl.stop_strings import cut_at_stop_string

TEXTS = ["hello there how are you", "one", "count to three please now then and again", "abc def"]
CUTOFF = 20
MAX_NEW = 12
GENERATIONS = 3


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model("llama", tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    assert len({len(p) for p in ids}) == len(ids)  # every prompt its own length
    return ids


def _alone(model, prompt: list[int], budget: int, stop_ids: list[int], **decoding) -> list[int]:
    """One prompt, batch of one, no padding: what a completion is when decoded on its own."""
    ids = torch.tensor([prompt])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=budget,
        eos_token_id=stop_ids,
        pad_token_id=0,
        **decoding,
    )
    return out[0, len(prompt) :].tolist()


def _first_new_token(ids: list[int], start: int) -> int:
    """The first position from `start` on whose token does not occur before it."""
    return next(i for i in range(start, len(ids)) if ids[i] not in ids[:i])


def _request(prompts, settings: SamplingSettings, seed: int = 0) -> RolloutRequest:
    return RolloutRequest(prompts, GENERATIONS, [settings.budget(len(p), CUTOFF) for p in prompts], seed)


def _sampler(tokenizer, settings, stop_ids, engine="batched", batch_size=5) -> PolicySampler:
    engine = make_engine(engine, tokenizer, settings, stop_ids, None, batch_size=batch_size)
    return PolicySampler(tokenizer, stop_ids, settings, CUTOFF, seed=3, dp_rank=0, engine=engine)


def _rows(prompts) -> list[PromptRow]:
    return [PromptRow(p, f"prompt {i}", None, {}, f"test:{i}") for i, p in enumerate(prompts)]


@pytest.mark.parametrize("batch_size", [5, 64])
def test_batched_greedy_rollouts_equal_one_by_one_generation(tokenizer, model, prompts, batch_size):
    greedy = SamplingSettings(do_sample=False, max_new_tokens=MAX_NEW)
    budgets = [greedy.budget(len(p), CUTOFF) for p in prompts]
    assert len(set(budgets)) > 1  # the cutoff leaves the longest prompt less room than max_new_tokens
    # A stop token the first prompt's greedy completion meets early: its rows end while others go on.
    unstopped = _alone(model, prompts[0], budgets[0], [tokenizer.eos_token_id], do_sample=False)
    position = _first_new_token(unstopped, 3)
    stop_ids = [tokenizer.eos_token_id, unstopped[position]]
    expected = [
        cut_at_stop(_alone(model, p, b, stop_ids, do_sample=False), stop_ids)[0]
        for p, b in zip(prompts, budgets)
    ]
    assert len(expected[0]) == position + 1 and any(len(e) > position + 1 for e in expected)
    engine = make_engine("batched", tokenizer, greedy, stop_ids, None, batch_size=batch_size)
    batched = engine.generate(model, _request(prompts, greedy))
    assert [[cut_at_stop(row, stop_ids)[0] for row in group] for group in batched] == [
        [e] * GENERATIONS for e in expected
    ]
    assert all(len(row) <= b for group, b in zip(batched, budgets) for row in group)
    sequential = make_engine("sequential", tokenizer, greedy, stop_ids, None).generate(
        model, _request(prompts, greedy)
    )
    assert [[cut_at_stop(row, stop_ids)[0] for row in group] for group in sequential] == [
        [e] * GENERATIONS for e in expected
    ]


def test_sampled_rollouts_repeat_for_a_seed_and_leave_the_callers_random_state(tokenizer, model, prompts):
    settings = SamplingSettings(do_sample=True, temperature=0.7, max_new_tokens=MAX_NEW)
    engine = make_engine("batched", tokenizer, settings, [tokenizer.eos_token_id], None, batch_size=5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = engine.generate(model, _request(prompts, settings, seed=7))
    assert torch.equal(torch.get_rng_state(), state)
    assert engine.generate(model, _request(prompts, settings, seed=7)) == first
    assert engine.generate(model, _request(prompts, settings, seed=8)) != first
    # the completions of one prompt are different samples, not one sample repeated
    assert any(len({tuple(row) for row in group}) > 1 for group in first)


def test_min_new_tokens_holds_back_the_stop_tokens(tokenizer, model, prompts):
    greedy = SamplingSettings(do_sample=False, max_new_tokens=MAX_NEW)
    unstopped = _alone(model, prompts[0], MAX_NEW, [tokenizer.eos_token_id], do_sample=False)
    stop_ids = [tokenizer.eos_token_id, unstopped[_first_new_token(unstopped, 1)]]
    rows = _rows(prompts)
    plain = roll_out(_sampler(tokenizer, greedy, stop_ids), model, rows, GENERATIONS, step=0)
    assert min(len(r.completion_ids) for r in plain) == 2  # without the key the first prompt stops at 2
    held = SamplingSettings(do_sample=False, max_new_tokens=MAX_NEW, min_new_tokens=6)
    rollouts = roll_out(_sampler(tokenizer, held, stop_ids), model, rows, GENERATIONS, step=0)
    for rollout in rollouts:
        assert len(rollout.completion_ids) >= 6
        assert not set(rollout.completion_ids[:5]) & set(stop_ids)


def test_stop_strings_end_a_completion_at_the_token_that_completes_them(tokenizer, model, prompts):
    stop_ids = [tokenizer.eos_token_id]
    alone = _alone(model, prompts[0], MAX_NEW, stop_ids, do_sample=False)
    text = tokenizer.decode(alone, skip_special_tokens=True)
    # A string that token k completes: the last character before it and the characters it adds.
    k = _first_new_token(alone, 4)
    before = len(tokenizer.decode(alone[:k], skip_special_tokens=True))
    after = len(tokenizer.decode(alone[: k + 1], skip_special_tokens=True))
    stop = text[before - 1 : after]
    assert after > before >= 1 and text.find(stop) == before - 1  # no earlier token completes it
    settings = SamplingSettings(do_sample=False, max_new_tokens=MAX_NEW, stop=(stop,))
    sampler = _sampler(tokenizer, settings, stop_ids)
    raw = sampler(model, _rows(prompts), GENERATIONS, 0)
    # generation itself stopped there: the row is padding after token k
    assert raw[0][0][: k + 1] == alone[: k + 1] and set(raw[0][0][k + 1 :]) <= {tokenizer.pad_token_id}
    first = roll_out(sampler, model, _rows(prompts), GENERATIONS, step=0)[0]
    assert first.completion_ids == alone[: k + 1]
    assert first.completion == text[: before - 1] and not first.truncated
    # a stop string completed before min_new_tokens does not count
    late = SamplingSettings(do_sample=False, max_new_tokens=MAX_NEW, stop=(stop,), min_new_tokens=k + 2)
    held = roll_out(_sampler(tokenizer, late, stop_ids), model, _rows(prompts), GENERATIONS, step=0)[0]
    assert len(held.completion_ids) >= k + 2 and held.completion_ids[: k + 2] == alone[: k + 2]


def test_cut_at_stop_string_keeps_the_completing_token_and_returns_the_text_before(tokenizer):
    ids = tokenizer.encode("the answer is 42. Done and more", add_special_tokens=False)
    kept, text = cut_at_stop_string(ids, tokenizer, [". Done", "zzz"])
    assert text == "the answer is 42"
    assert tokenizer.decode(kept).endswith("Done") or ". Done" in tokenizer.decode(kept)
    assert ". Done" not in tokenizer.decode(kept[:-1])
    assert cut_at_stop_string(ids, tokenizer, ["zzz"]) is None
    # the first of two strings to end wins
    assert cut_at_stop_string(ids, tokenizer, ["more", "answer"])[1] == "the "


def test_gumbel_sampling_draws_from_the_softmax_of_the_scores():
    """The engines' sampler: argmax of the scores plus Gumbel noise, counted over many draws, has the
    softmax's frequencies (and a filtered token, at -inf, is never drawn)."""
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]]).expand(200_000, 5).contiguous()
    torch.manual_seed(0)
    drawn = GumbelSampling()(torch.zeros(1, 1, dtype=torch.long), scores).argmax(-1)
    frequencies = torch.bincount(drawn, minlength=5).float() / drawn.numel()
    torch.testing.assert_close(frequencies, torch.softmax(scores[0], -1), atol=4e-3, rtol=0)
    assert frequencies[4] == 0

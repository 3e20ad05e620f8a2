"""One loaded model answering chat requests from a bounded queue, batching those that can share a
`generate`.

The HTTP handlers never run the model: they put a request on the queue and read its answer (whole,
or piece by piece while it streams). One worker thread takes requests in arrival order, so the
model is never called from two threads at once and a request is never lost: it is answered, or
refused at the door (`QueueFull`) when the queue is at its bound. Requests waiting together that
decode alike (not streamed, the same sampling) run as one batched `generate`, prompts padded on the
left; a streamed one runs alone, so its pieces arrive as they are made.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import TextIteratorStreamer

from ..data.templates import chat_format
from ..models.kv_cache import set_kv_cache
from ..models.loader import load_model, load_tokenizer


def load_for_generation(config) -> tuple:
    """(model, tokenizer, template) of a config, ready to generate: frozen, on the GPU when there is
    one, in eval mode with the KV cache on (training switches it off). `chat` and `api` share it."""
    tokenizer = load_tokenizer(config.model)
    template = chat_format(tokenizer, config.data)
    model = load_model(config.model, config.finetuning, tokenizer, config.training, is_trainable=False)
    if torch.cuda.is_available():
        model = model.to("cuda")
    set_kv_cache(model, True)
    return model.eval(), tokenizer, template


class QueueFull(Exception):
    """The request queue is at its bound (the server answers 503)."""


class PromptTooLong(ValueError):
    """The prompt leaves no room to answer within the model's length."""


@dataclass
class Sampling:
    """One request's decoding: OpenAI's fields in transformers' terms."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    stream: bool = False

    def batch_key(self) -> tuple | None:
        """Requests with the same key can share one batched `generate`; None: this one runs alone
        (a streamed answer is sent piece by piece as its own generation produces it)."""
        if self.stream:
            return None
        return (self.temperature > 0, self.temperature, self.top_p)

    def generate_kwargs(self) -> dict:
        sampled = self.temperature > 0
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": sampled}
        if sampled:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


@dataclass
class Answer:
    """What a request gets back: text pieces as they are decoded, then the whole and why it ended."""

    pieces: queue.Queue = field(default_factory=queue.Queue)  # str pieces, then None
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def stream(self) -> Iterator[str]:
        while (piece := self.pieces.get()) is not None:
            yield piece
        if self.error is not None:
            raise self.error


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class ChatEngine:
    """The model, its tokenizer and template, and the worker that runs them."""

    def __init__(self, config, max_queue: int = 16, max_batch: int = 8):
        self.model, self.tokenizer, self.template = load_for_generation(config)
        self.name = config.model.adapter_name_or_path or config.model.model_name_or_path
        self.max_length = config.data.cutoff_len
        self.default_max_new_tokens = config.generating.max_new_tokens
        self.max_batch = max_batch
        self._requests: queue.Queue = queue.Queue(maxsize=max_queue)
        # Requests the worker has taken off the queue but not yet run (they count toward the bound).
        self._deferred: collections.deque = collections.deque()
        self._worker = threading.Thread(target=self._serve, name="ulysses-pro-api-worker", daemon=True)
        self._worker.start()

    def prompt_ids(self, messages: list[dict], tools: str | None = None) -> list[int]:
        return self.template.prompt_ids(self.tokenizer, messages, tools)

    def submit(self, ids: list[int], sampling: Sampling) -> Answer:
        """Queue a request; raises QueueFull instead of waiting when the queue is at its bound."""
        room = self.max_length - len(ids)
        if room < 1:
            raise PromptTooLong(
                f"the prompt is {len(ids)} tokens; this server answers within {self.max_length}"
            )
        sampling.max_new_tokens = min(sampling.max_new_tokens, room)
        answer = Answer(prompt_tokens=len(ids))
        try:
            if self._requests.qsize() + len(self._deferred) >= self._requests.maxsize:
                raise queue.Full
            self._requests.put_nowait((ids, sampling, answer))
        except queue.Full:
            raise QueueFull(f"{self._requests.maxsize} requests are waiting; try again shortly") from None
        return answer

    def _next_batch(self) -> list[tuple]:
        """The oldest waiting request, and the waiting ones that can share its `generate` (up to
        `max_batch`); the others keep their places, in order."""
        waiting = self._deferred
        first = waiting.popleft() if waiting else self._requests.get()
        key = first[1].batch_key()
        while True:  # everything that has arrived, behind the requests already set aside
            try:
                waiting.append(self._requests.get_nowait())
            except queue.Empty:
                break
        if key is None:
            return [first]
        batch = [first]
        for request in list(waiting):
            if len(batch) < self.max_batch and request[1].batch_key() == key:
                waiting.remove(request)
                batch.append(request)
        return batch

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                if len(batch) == 1:
                    self._generate(*batch[0])
                else:
                    self._generate_batch(batch)
            except BaseException as error:  # the requests fail, the worker goes on
                for _, _, answer in batch:
                    answer.error = error
            finally:
                for _, _, answer in batch:
                    answer.pieces.put(None)
                    answer.done.set()

    @torch.no_grad()
    def _generate_batch(self, batch: list[tuple]) -> None:
        """Whole answers of several waiting requests from one `generate` (prompts padded on the
        left, each answer cut at its own stop string and token budget)."""
        width = max(len(ids) for ids, _, _ in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows = [[pad] * (width - len(ids)) + ids for ids, _, _ in batch]
        mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids, _, _ in batch]
        inputs = torch.tensor(rows, device=self.model.device)
        longest = max(sampling.max_new_tokens for _, sampling, _ in batch)
        stop_ids = self.template.stop_token_ids(self.tokenizer)
        output = self.model.generate(
            input_ids=inputs,
            attention_mask=torch.tensor(mask, device=self.model.device),
            eos_token_id=stop_ids,
            pad_token_id=pad,
            **{**batch[0][1].generate_kwargs(), "max_new_tokens": longest},
        )
        for row, (_, sampling, answer) in zip(output[:, width:].tolist(), batch):
            row = row[: sampling.max_new_tokens]
            ended = next((i for i, token in enumerate(row) if token in stop_ids), None)
            tokens = row if ended is None else row[: ended + 1]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            visible, stopped = cut_at_stop(text, sampling.stop)
            answer.text, answer.completion_tokens = visible, len(tokens)
            answer.finish_reason = "stop" if (stopped or ended is not None) else "length"
            if visible:
                answer.pieces.put(visible)

    @torch.no_grad()
    def _generate(self, ids: list[int], sampling: Sampling, answer: Answer) -> None:
        inputs = torch.tensor([ids], device=self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop_ids = self.template.stop_token_ids(self.tokenizer)
        produced: list[torch.Tensor] = []

        def run() -> None:
            produced.append(
                self.model.generate(
                    input_ids=inputs,
                    attention_mask=torch.ones_like(inputs),
                    streamer=streamer,
                    eos_token_id=stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    # transformers ends generation at a stop string (it needs the tokenizer for that)
                    **({"stop_strings": sampling.stop, "tokenizer": self.tokenizer} if sampling.stop else {}),
                    **sampling.generate_kwargs(),
                )
            )

        generation = threading.Thread(target=run)
        generation.start()
        text, sent = "", 0
        for piece in streamer:
            text += piece
            # Hold back what could still be the start of a stop string; never send past one.
            visible, stopped = cut_at_stop(text, sampling.stop)
            safe = (
                len(visible)
                if stopped
                else max(sent, len(visible) - max((len(s) for s in sampling.stop), default=0))
            )
            if safe > sent:
                answer.pieces.put(visible[sent:safe])
                sent = safe
        generation.join()
        visible, stopped = cut_at_stop(text, sampling.stop)
        if len(visible) > sent:
            answer.pieces.put(visible[sent:])
        new_tokens = produced[0].shape[1] - inputs.shape[1] if produced else 0
        ended_by_stop_token = bool(produced) and int(produced[0][0, -1]) in stop_ids
        answer.text = visible
        answer.completion_tokens = int(new_tokens)
        cut_by_length = not (stopped or ended_by_stop_token) and new_tokens >= sampling.max_new_tokens
        answer.finish_reason = "length" if cut_by_length else "stop"

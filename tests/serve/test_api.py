"""`ulysses-pro api`'s OpenAI-compatible server on a tiny model, driven by the `openai` client and by
raw HTTP: answers (whole and streamed), concurrency, stop strings, and a 4xx for each malformed
request after which the server still answers."""

from __future__ import annotations

import collections
import json
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

MODEL = "tiny:llama?hidden_size=64&num_layers=2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on localhost for the module, with a queue of 4 (so 503 is reachable)."""
    import uvicorn

    from ulysses_pro.config import load_config
    from ulysses_pro.serve.app import create_app
    from ulysses_pro.serve.engine import ChatEngine

    config = load_config(
        {
            "model_name_or_path": MODEL,
            "template": "chatml",
            "cutoff_len": 96,
            "max_new_tokens": 8,
            "output_dir": str(tmp_path_factory.mktemp("api")),
        }
    )
    engine = ChatEngine(config, max_queue=4)
    port = _free_port()
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uvicorn_server.started and time.time() < deadline:
        time.sleep(0.05)
    assert uvicorn_server.started, "the server did not start"
    yield engine, f"http://127.0.0.1:{port}/v1"
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


def _client(base_url: str):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def test_the_openai_client_lists_the_model_and_gets_whole_and_streamed_answers(server):
    engine, url = server
    client = _client(url)
    assert [m.id for m in client.models.list().data] == [MODEL]
    messages = [{"role": "user", "content": "count to three"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=6)
    answer = whole.choices[0]
    assert answer.message.role == "assistant" and answer.finish_reason in ("stop", "length")
    assert 1 <= whole.usage.completion_tokens <= 6 and whole.usage.prompt_tokens > 0
    # greedy: the stream is the same answer, piece by piece
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=6, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == answer.message.content
    assert (
        chunks[0].choices[0].delta.role == "assistant"
        and chunks[-1].choices[0].finish_reason == answer.finish_reason
    )


def test_a_stop_string_ends_the_answer_before_it(server):
    engine, url = server
    client = _client(url)
    messages = [{"role": "user", "content": "hello"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8)
    text = full.choices[0].message.content
    if len(text) < 3:
        pytest.skip(f"the tiny model answered too little to cut: {text!r}")
    stop = text[1:3]
    cut = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=8, stop=[stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_eight_concurrent_requests_are_all_answered(server):
    engine, url = server
    client = _client(url)

    def ask(index: int) -> str:
        for _ in range(50):  # the queue holds 4: a 503 is retried, never lost silently
            try:
                reply = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"question {index}"}], max_tokens=4
                )
                return reply.choices[0].finish_reason
            except openai.InternalServerError as error:
                assert error.status_code == 503
                time.sleep(0.2)
        raise AssertionError("never admitted")

    with ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(ask, range(8)))
    assert len(reasons) == 8 and all(r in ("stop", "length") for r in reasons)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("{not json", 400, "invalid request"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
            400,
            "temperature",
        ),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "is not served here"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "word " * 200}]},
            400,
            "this server answers within 96",
        ),
    ],
    ids=["malformed-json", "no-messages", "unknown-role", "bad-temperature", "unknown-model", "too-long"],
)
def test_a_malformed_request_gets_a_4xx_with_a_message_and_the_server_goes_on(server, body, status, words):
    engine, url = server
    content = (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(
        f"{url}/chat/completions", data=content, headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == status
    assert words in json.loads(refused.value.read())["error"]["message"]
    after = _client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "still there?"}], max_tokens=2
    )
    assert after.choices[0].message.role == "assistant"


def test_a_full_queue_is_refused_and_nothing_queued_is_lost():
    """The bound: requests beyond it are refused at the door (the app answers 503), the queued
    ones stay queued."""
    from ulysses_pro.serve.engine import Answer, ChatEngine, QueueFull, Sampling

    stalled = ChatEngine.__new__(ChatEngine)  # no model and no worker: the queue only fills
    stalled.max_length = 64
    stalled._requests, stalled._deferred = queue.Queue(maxsize=2), collections.deque()
    answers = [stalled.submit([1, 2, 3], Sampling(max_new_tokens=4)) for _ in range(2)]
    assert all(isinstance(a, Answer) for a in answers) and stalled._requests.qsize() == 2
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        stalled.submit([1, 2, 3], Sampling(max_new_tokens=4))
    assert stalled._requests.qsize() == 2  # the refused one was never queued; the others still are


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_reach_the_prompt_and_a_call_in_the_templates_format_comes_back_as_tool_calls(server, monkeypatch):
    """The tiny model does not call tools by itself: its answer is scripted in the chatml template's
    tool format (LLaMA-Factory's `default`: Action / Action Input); the prompts are the real ones."""
    engine, base_url = server
    prompts = []
    scripted = 'Action: get_weather\nAction Input: {"city": "Paris"}'

    def generate(ids, sampling, answer):
        prompts.append(engine.tokenizer.decode(ids))
        answer.pieces.put(scripted)
        answer.text, answer.completion_tokens, answer.finish_reason = scripted, 9, "stop"

    monkeypatch.setattr(engine, "_generate", generate)
    monkeypatch.setattr(engine, "max_length", 1024)  # the tool descriptions are long
    client = _client(base_url)
    question = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat.completions.create(model=MODEL, messages=question, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert "You have access to the following tools" in prompts[-1] and "Tool Name: get_weather" in prompts[-1]

    follow_up = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    streamed = client.chat.completions.create(model=MODEL, messages=follow_up, tools=[WEATHER], stream=True)
    chunks = list(streamed)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    delta_calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in delta_calls] == ["get_weather"]
    # the earlier call is written in the template's format, the tool's answer as an observation
    assert 'Action: get_weather\nAction Input: {"city": "Paris"}' in prompts[-1]
    assert '{"temperature": 21}' in prompts[-1]

    plain = client.chat.completions.create(model=MODEL, messages=question)  # no tools: plain text
    assert plain.choices[0].message.content == scripted and not plain.choices[0].message.tool_calls


def test_waiting_requests_that_decode_alike_share_one_generate_in_arrival_order():
    """The worker's batches: the oldest request with every waiting one of the same sampling (not
    streamed); a streamed one alone; the others keep their order."""
    from ulysses_pro.serve.engine import ChatEngine, Sampling

    stalled = ChatEngine.__new__(ChatEngine)
    stalled.max_length, stalled.max_batch = 64, 8
    stalled._requests, stalled._deferred = queue.Queue(maxsize=8), collections.deque()
    kinds = {
        "A": Sampling(4, temperature=0.0),
        "B": Sampling(4, temperature=0.0, stream=True),
        "C": Sampling(6, temperature=0.0, stop=["x"]),
        "D": Sampling(4, temperature=0.7),
        "E": Sampling(2, temperature=0.0),
    }
    answers = {name: stalled.submit([1, 2, 3], sampling) for name, sampling in kinds.items()}
    names = {id(answer): name for name, answer in answers.items()}
    batches = [[names[id(a)] for _, _, a in stalled._next_batch()] for _ in range(3)]
    assert batches == [["A", "C", "E"], ["B"], ["D"]]


def test_a_batched_generate_gives_each_request_its_one_by_one_greedy_answer(server):
    """Prompts of different lengths, padded on the left in one `generate`: each answer equals the
    answer the request gets alone (greedy), cut at its own token budget and stop string."""
    from ulysses_pro.serve.engine import Answer, Sampling

    engine, _ = server
    prompts = [
        engine.prompt_ids([{"role": "user", "content": text}])
        for text in ("hi", "tell me about the sea and the sky today", "count to three")
    ]
    budgets = [8, 3, 6]
    alone, together = [], []
    for ids, budget in zip(prompts, budgets):
        answer = Answer()
        engine._generate(ids, Sampling(budget, temperature=0.0), answer)
        alone.append((answer.text, answer.completion_tokens, answer.finish_reason))
    batch = [(ids, Sampling(budget, temperature=0.0), Answer()) for ids, budget in zip(prompts, budgets)]
    engine._generate_batch(batch)
    together = [(a.text, a.completion_tokens, a.finish_reason) for _, _, a in batch]
    assert together == alone

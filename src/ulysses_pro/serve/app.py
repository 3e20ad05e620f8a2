"""The OpenAI-compatible HTTP surface: `/v1/models` and `/v1/chat/completions` (streaming as
server-sent events), over a `ChatEngine`.

The request and response shapes are OpenAI's chat completions API (the `openai` client works
unchanged). A malformed request is a 4xx with a message in OpenAI's error shape; a full queue is a
503; the server goes on answering after either.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .engine import ChatEngine, PromptTooLong, QueueFull, Sampling
from .tools import answer_calls, call_style, template_messages, tools_json


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None  # "none" leaves the tools out of the prompt


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "code": code}}
    )


def create_app(engine: ChatEngine) -> FastAPI:
    app = FastAPI(title="Ulysses Pro API")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        return _error(400, f"invalid request: {problems}", "invalid_request_error")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "owned_by": "ulysses-pro"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        if body.model != engine.name:
            return _error(
                404,
                f"model {body.model!r} is not served here; GET /v1/models lists {engine.name!r}",
                "invalid_request_error",
                "model_not_found",
            )
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        sampling = Sampling(
            max_new_tokens=body.max_completion_tokens or body.max_tokens or engine.default_max_new_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=stops,
            stream=body.stream,
        )
        tools = None if body.tool_choice == "none" else tools_json(body.tools)
        try:
            ids = engine.prompt_ids(template_messages([m.model_dump() for m in body.messages]), tools)
        except (ValueError, KeyError) as error:  # a malformed tool call or tool list
            return _error(400, f"invalid request: {error}", "invalid_request_error")
        try:
            answer = engine.submit(ids, sampling)
        except PromptTooLong as error:
            return _error(400, str(error), "invalid_request_error", "context_length_exceeded")
        except QueueFull as error:
            return _error(503, str(error), "server_busy")
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        style = call_style(engine.template) if tools else None
        if body.stream:
            return StreamingResponse(
                _events(answer, completion, created, engine.name, style), media_type="text/event-stream"
            )
        await run_in_threadpool(answer.done.wait)
        if answer.error is not None:
            return _error(500, f"generation failed: {answer.error}", "server_error")
        calls = answer_calls(style, answer.text) if style else None
        message = (
            {"role": "assistant", "content": None, "tool_calls": calls}
            if calls
            else {"role": "assistant", "content": answer.text}
        )
        return {
            "id": completion,
            "object": "chat.completion",
            "created": created,
            "model": engine.name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if calls else answer.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
        }

    return app


def _events(answer, completion: str, created: int, model: str, style: str | None = None):
    """Server-sent events in OpenAI's chunk shape: the role, the text pieces, the finish, [DONE].
    With tools (`style`), the answer is held until it is whole: it is either text or calls."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {
            "id": completion,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    def generate():
        yield chunk({"role": "assistant", "content": ""})
        try:
            pieces = list(answer.stream()) if style else answer.stream()
            calls = answer_calls(style, "".join(pieces)) if style else None
            if calls:
                delta = [{"index": i, **call} for i, call in enumerate(calls)]
                yield chunk({"tool_calls": delta})
                yield chunk({}, "tool_calls")
                yield "data: [DONE]\n\n"
                return
            for piece in pieces:
                yield chunk({"content": piece})
        except Exception as error:  # the stream has started: report in-band, as OpenAI does
            yield f"data: {json.dumps({'error': {'message': f'generation failed: {error}', 'type': 'server_error'}})}\n\n"
            return
        answer.done.wait()
        yield chunk({}, answer.finish_reason)
        yield "data: [DONE]\n\n"

    return generate()

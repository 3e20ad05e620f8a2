"""OpenAI tool calling over the run's template: the request's `tools` and tool messages written the
way the template writes them (LLaMA-Factory's tool formats, `data/lf_template/tools.py`), and the
answer's calls read back in the same format."""

from __future__ import annotations

import json
import uuid

from ..data.lf_template.tools import extract_calls


def call_style(template) -> str:
    """The tool-call format of the run's template: a LLaMA-Factory template's own; a model's chat
    template (Jinja) is read in Qwen's `<tool_call>` form, the one Hugging Face tool templates use."""
    inner = getattr(template, "template", None)
    return getattr(inner, "function_format", None) or "qwen"


def tools_json(tools: list[dict] | None) -> str | None:
    """OpenAI's `tools` ({type: function, function: {...}}) as the tools column LLaMA-Factory rows carry."""
    if not tools:
        return None
    return json.dumps([tool.get("function", tool) for tool in tools], ensure_ascii=False)


def template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages as the template's roles: an assistant message with `tool_calls` becomes a
    function-call message, a `tool` message an observation."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if message["role"] == "assistant" and calls:
            content = [
                {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"] or "{}")}
                for c in calls
            ]
            out.append({"role": "function", "content": json.dumps(content, ensure_ascii=False)})
        else:
            out.append({"role": message["role"], "content": message.get("content") or ""})
    return out


def answer_calls(style: str, text: str) -> list[dict] | None:
    """The answer's tool calls in OpenAI's shape, or None for a plain answer."""
    calls = extract_calls(style, text)
    if not calls:
        return None
    return [
        {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for name, arguments in calls
    ]

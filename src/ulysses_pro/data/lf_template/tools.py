"""How LLaMA-Factory writes tool definitions into the system prompt and tool calls into answers.

One `ToolStyle` per `tool_format` value LLaMA-Factory defines for the templates we implement
(`default`, `qwen`, `qwen3_5`, `llama3`, `mistral`, `glm4`). The prompt texts are LLaMA-Factory's
(`src/llamafactory/data/tool_utils.py`), since the point is to produce its tokens exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import DataError

DEFAULT_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n'
    "```\n"
)
QWEN_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, '
    '"arguments": <args-json-object>}}\n</tool_call>'
)
QWEN3_5_PROMPT = (
    "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>{tool_text}"
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: "
    "an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language "
    "BEFORE the function call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge "
    "and do not tell the user about function calls\n</IMPORTANT>"
)
LLAMA3_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call. "
    'Respond in the format {{"name": function name, "parameters": dictionary of argument name and its value}}. '
    "Do not use variables.\n\n{tool_text}"
)
GLM4_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)


def today() -> str:
    """The date Llama 3's tool prompt carries (a function, so tests can fix it)."""
    return datetime.now().strftime("%d %b %Y")


def _plain(tool: dict) -> dict:
    """A tool as {name, description, parameters}, whether or not it is wrapped as OpenAI's function."""
    return tool.get("function", "") if tool.get("type") == "function" else tool


def _wrapped(tool: dict) -> dict:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _default_tools(tools: list[dict]) -> str:
    tool_text, names = "", []
    for tool in map(_plain, tools):
        params = ""
        parameters = tool["parameters"]
        for name, param in parameters["properties"].items():
            required = ", required" if name in parameters.get("required", []) else ""
            enum = ", should be one of [{}]".format(", ".join(param["enum"])) if param.get("enum") else ""
            items = (
                ", where each item should be {}".format(param["items"].get("type", ""))
                if param.get("items")
                else ""
            )
            params += f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}{enum}{items}\n"
        tool_text += f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{params}\n"
        names.append(tool["name"])
    return DEFAULT_PROMPT.format(tool_text=tool_text, tool_names=", ".join(names))


def _default_calls(calls: list[tuple[str, str]]) -> str:
    return "\n".join(f"Action: {name}\nAction Input: {arguments}" for name, arguments in calls)


def _qwen_tools(tools: list[dict]) -> str:
    text = "".join("\n" + json.dumps(_wrapped(tool), ensure_ascii=False) for tool in tools)
    return QWEN_PROMPT.format(tool_text=text)


def _qwen_calls(calls: list[tuple[str, str]]) -> str:
    texts = [json.dumps({"name": n, "arguments": json.loads(a)}, ensure_ascii=False) for n, a in calls]
    return "\n".join(f"<tool_call>\n{text}\n</tool_call>" for text in texts)


def _qwen3_5_tools(tools: list[dict]) -> str:
    text = "".join("\n" + json.dumps(_plain(tool) or tool, ensure_ascii=False) for tool in tools)
    return QWEN3_5_PROMPT.format(tool_text=text)


def _qwen3_5_calls(calls: list[tuple[str, str]]) -> str:
    """Qwen3.5's XML calls: one <parameter=...> block per argument, strings bare, the rest as JSON."""
    texts = []
    for name, arguments in calls:
        text = f"<tool_call>\n<function={name}>"
        for key, value in json.loads(arguments).items():
            value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            text += f"\n<parameter={key}>\n{value}\n</parameter>"
        texts.append(text + "\n</function>\n</tool_call>")
    return "\n".join(texts)


def _llama3_tools(tools: list[dict]) -> str:
    text = "".join(json.dumps(_wrapped(tool), indent=4, ensure_ascii=False) + "\n\n" for tool in tools)
    return LLAMA3_PROMPT.format(date=today(), tool_text=text)


def _llama3_calls(calls: list[tuple[str, str]]) -> str:
    objects = [{"name": n, "parameters": json.loads(a)} for n, a in calls]
    return json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False)


def _mistral_tools(tools: list[dict]) -> str:
    return (
        "[AVAILABLE_TOOLS] "
        + json.dumps([_wrapped(t) for t in tools], ensure_ascii=False)
        + "[/AVAILABLE_TOOLS]"
    )


def _mistral_calls(calls: list[tuple[str, str]]) -> str:
    return json.dumps([{"name": n, "arguments": json.loads(a)} for n, a in calls], ensure_ascii=False)


def _glm4_tools(tools: list[dict]) -> str:
    text = "".join(
        "\n\n## {name}\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。".format(
            name=tool["name"], body=json.dumps(tool, indent=4, ensure_ascii=False)
        )
        for tool in map(_plain, tools)
    )
    return GLM4_PROMPT.format(tool_text=text)


def _glm4_calls(calls: list[tuple[str, str]]) -> str:
    if len(calls) > 1:
        raise ValueError("GLM-4's tool format has no parallel calls")
    return f"{calls[0][0]}\n{calls[0][1]}"


@dataclass(frozen=True)
class ToolStyle:
    """The system-prompt text for a list of tools, and the answer text for a list of calls."""

    name: str
    describe: Callable[[list[dict]], str]
    calls: Callable[[list[tuple[str, str]]], str]


TOOL_STYLES = {
    style.name: style
    for style in (
        ToolStyle("default", _default_tools, _default_calls),
        ToolStyle("qwen", _qwen_tools, _qwen_calls),
        ToolStyle("qwen3_5", _qwen3_5_tools, _qwen3_5_calls),
        ToolStyle("llama3", _llama3_tools, _llama3_calls),
        ToolStyle("mistral", _mistral_tools, _mistral_calls),
        ToolStyle("glm4", _glm4_tools, _glm4_calls),
    )
}


def tool_style(name: str) -> ToolStyle:
    if name not in TOOL_STYLES:
        raise DataError(f"tool_format: {name!r} is not implemented; use one of {sorted(TOOL_STYLES)}")
    return TOOL_STYLES[name]


def tools_text(style: ToolStyle, tools: str) -> str:
    """The tools column (a JSON list) as the system-prompt text; an empty list writes nothing."""
    try:
        parsed: Any = json.loads(tools)
    except json.JSONDecodeError as err:
        raise DataError(f"column tools: not valid JSON ({err.msg} at character {err.pos})") from None
    return style.describe(parsed) if len(parsed) != 0 else ""


def parse_calls(content: str) -> list[tuple[str, str]]:
    """A function message's JSON ({name, arguments} or a list of them) -> (name, arguments JSON) pairs."""
    try:
        calls = json.loads(content)
    except json.JSONDecodeError as err:
        raise DataError(
            f"a function_call message is not valid JSON ({err.msg} at character {err.pos}): {content[:80]!r}"
        ) from None
    calls = calls if isinstance(calls, list) else [calls]
    try:
        return [(call["name"], json.dumps(call["arguments"], ensure_ascii=False)) for call in calls]
    except (KeyError, TypeError):
        raise DataError(
            f"a function_call message needs objects with 'name' and 'arguments': {content[:80]!r}"
        ) from None


# -- reading calls back out of a generated answer (LLaMA-Factory's `tool_extractor` per format) ----


def _as_calls(objects: Any, arguments_key: str) -> list[tuple[str, str]] | None:
    objects = objects if isinstance(objects, list) else [objects]
    if not objects or not all(isinstance(o, dict) and "name" in o and arguments_key in o for o in objects):
        return None
    return [(o["name"], json.dumps(o[arguments_key], ensure_ascii=False)) for o in objects]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _extract_default(text: str) -> list[tuple[str, str]] | None:
    found = re.findall(r"Action:\s*([\w.\-]+)\s*Action Input:\s*(.+?)(?=\s*Action:|\s*$)", text, re.DOTALL)
    calls = [(name, _json(arguments.strip().strip("`"))) for name, arguments in found]
    if not calls or any(arguments is None for _, arguments in calls):
        return None
    return [(name, json.dumps(arguments, ensure_ascii=False)) for name, arguments in calls]


def _extract_qwen(text: str) -> list[tuple[str, str]] | None:
    blocks = re.findall(r"<tool_call>(.+?)</tool_call>", text, re.DOTALL)
    calls = [_as_calls(_json(block.strip()), "arguments") for block in blocks]
    if not calls or any(c is None for c in calls):
        return None
    return [call for found in calls for call in found]


def _extract_qwen3_5(text: str) -> list[tuple[str, str]] | None:
    found = re.findall(r"<tool_call>\s*<function=\s*([^\s<>]+)\s*(.*?)\s*</function>\s*</tool_call>", text, re.DOTALL)
    calls = []
    for name, block in found:
        arguments = {}
        for key, raw in re.findall(r"<parameter=(.*?)>(.*?)</parameter>", block.strip(), re.DOTALL):
            parsed = _json(raw.strip())
            arguments[key] = raw.strip() if parsed is None and raw.strip() != "null" else parsed
        calls.append((name.strip(), json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def _extract_llama3(text: str) -> list[tuple[str, str]] | None:
    return _as_calls(_json(text.strip()), "parameters")


def _extract_mistral(text: str) -> list[tuple[str, str]] | None:
    return _as_calls(_json(text.strip().removeprefix("[TOOL_CALLS]").strip()), "arguments")


def _extract_glm4(text: str) -> list[tuple[str, str]] | None:
    name, _, arguments = text.strip().partition("\n")
    parsed = _json(arguments)
    if not re.fullmatch(r"[\w.\-]+", name) or not isinstance(parsed, dict):
        return None
    return [(name, json.dumps(parsed, ensure_ascii=False))]


EXTRACTORS: dict[str, Callable[[str], list[tuple[str, str]] | None]] = {
    "default": _extract_default,
    "qwen": _extract_qwen,
    "qwen3_5": _extract_qwen3_5,
    "llama3": _extract_llama3,
    "mistral": _extract_mistral,
    "glm4": _extract_glm4,
}


def extract_calls(style_name: str, text: str) -> list[tuple[str, str]] | None:
    """The tool calls an answer makes in `style_name`'s format, as (name, arguments JSON) pairs;
    None when the answer is plain text (or not a well-formed call)."""
    return EXTRACTORS[style_name](text)

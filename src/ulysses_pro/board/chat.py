"""The Chat tab's model: one `serve.engine.ChatEngine` (the API server's) at a time, streamed replies."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ..config import ConfigError, load_config
from ..data.errors import DataError
from .checks import InputError


def chat_config(model: str, adapter: str | None, template: str | None, max_new_tokens: int) -> dict:
    """The config keys `chat` reads for a model (and adapter) to talk to."""
    config = {"model_name_or_path": (model or "").strip(), "max_new_tokens": int(max_new_tokens)}
    if adapter and adapter.strip():
        config["adapter_name_or_path"] = adapter.strip()
        config["finetuning_type"] = "lora"
    if template:
        config["template"] = template
    return config


class ChatSession:
    """The loaded engine (None until `load`); loading another releases the previous model."""

    def __init__(self) -> None:
        self.engine = None
        self.loaded: dict | None = None
        self._lock = threading.Lock()

    def load(self, config: dict) -> str:
        from ..serve.engine import ChatEngine

        if not config.get("model_name_or_path"):
            raise InputError("config error: model_name_or_path: give the model (or the run's output folder)")
        try:
            run_config = load_config(config)
        except (ConfigError, DataError) as err:
            raise InputError(f"config error: {err}") from None
        with self._lock:
            self.unload()
            try:
                self.engine = ChatEngine(run_config, max_queue=2)
            except (ConfigError, DataError, OSError, ValueError) as err:
                raise InputError(f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
            self.loaded = config
        return f"loaded {self.engine.name}"

    def unload(self) -> None:
        """Drop the model. ChatEngine's worker thread has no stop; it waits idle on its empty queue,
        holding the engine but no longer the weights."""
        if self.engine is not None:
            self.engine.model = None
            self.engine = None
            self.loaded = None

    def reply(self, history: list[dict], message: str, max_new_tokens: int) -> Iterator[str]:
        """The answer so far, growing as tokens decode (greedy, as `chat` answers by default)."""
        from ..serve.engine import Sampling

        engine = self.engine
        if engine is None:
            raise InputError("load a model first")
        messages = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        messages.append({"role": "user", "content": message})
        ids = engine.prompt_ids(messages)
        answer = engine.submit(ids, Sampling(max_new_tokens=int(max_new_tokens), temperature=0.0))
        text = ""
        for piece in answer.stream():
            text += piece
            yield text


def _text(content) -> str:
    """Gradio's message content: a string, or a list of {type: text, text: ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)

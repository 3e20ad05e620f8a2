"""`ulysses-pro api CONFIG.yaml [key=value ...] [--host H] [--port P] [--max-queue N]`: serve the
model (and adapter) of a config over an OpenAI-compatible HTTP API (`serve/app.py`), as
`llamafactory-cli api` does. The `openai` client works against it unchanged:

    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused").chat.completions.create(...)
"""

from __future__ import annotations

import argparse
import os

from ..config import load_config


def run(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ulysses-pro api", description="Serve a model over an OpenAI-compatible API."
    )
    # LLaMA-Factory's api reads API_HOST / API_PORT; so does this.
    parser.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    parser.add_argument("--max-queue", type=int, default=16, help="requests waiting before 503 (default 16)")
    options, config_arguments = parser.parse_known_args(arguments)
    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.engine import ChatEngine
    except ImportError as error:
        raise SystemExit(
            f"ulysses-pro api needs the serve extra: pip install -e '.[serve]' ({error})"
        ) from None
    engine = ChatEngine(load_config(None, config_arguments), max_queue=options.max_queue)
    print(f"serving {engine.name!r} at http://{options.host}:{options.port}/v1", flush=True)
    uvicorn.run(create_app(engine), host=options.host, port=options.port, log_level="warning")
    return 0

"""`ulysses-pro webui [--host 127.0.0.1] [--port 7860] [--runs-dir saves/webui] [--share]`: the board.

Gradio serves it on localhost; training runs are `ulysses-pro train` subprocesses (board/runs.py).
Gradio's telemetry and version check are off before it is imported: the board talks to nobody but
the browser that opens it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Read by gradio (and huggingface_hub) at import or launch time.
QUIET_ENVIRONMENT = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SSR_MODE": "False",
    "DO_NOT_TRACK": "1",
}


def run(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ulysses-pro webui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--runs-dir", default="saves/webui", help="where new runs' output folders go")
    parser.add_argument(
        "--share", action="store_true", help="also open a public gradio.live tunnel (off by default)"
    )
    options = parser.parse_args(arguments)
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("webui needs Gradio: pip install 'ulysses-pro[board]'", file=sys.stderr)
        return 2
    from ..board.app import build_app

    # Gradio's own requests to itself (startup checks) are logged by httpx at INFO: noise here.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    demo = build_app(options.runs_dir)
    print(f"ulysses-pro webui on http://{options.host}:{options.port} (runs in {options.runs_dir})", flush=True)
    demo.queue().launch(
        server_name=options.host,
        server_port=options.port,
        share=options.share,
        inbrowser=False,
        show_error=True,
        footer_links=[],
    )
    return 0

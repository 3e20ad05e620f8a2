"""`ulysses-pro webui` on the command line: listed in the usage, one line when Gradio is missing."""

from __future__ import annotations

import os
import sys

from ulysses_pro.cli import USAGE, main


def test_webui_is_in_the_usage():
    assert "  webui [--host 127.0.0.1] [--port 7860] [--runs-dir DIR]" in USAGE


def test_without_gradio_webui_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["webui", "--port", "1"]) == 2
    assert capsys.readouterr().err.strip() == "webui needs Gradio: pip install 'ulysses-pro[board]'"


def test_webui_turns_gradios_telemetry_off_before_importing_it(monkeypatch):
    from ulysses_pro.commands import webui

    for key in webui.QUIET_ENVIRONMENT:
        monkeypatch.setenv(key, "unset")  # recorded, so the test leaves the environment as it found it
        monkeypatch.delenv(key)
    monkeypatch.setitem(sys.modules, "gradio", None)
    webui.run([])
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"

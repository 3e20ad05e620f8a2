"""`ulysses-pro webui` driven in headless Chromium (Debian's, through Playwright): fill the Train form
with the tiny model and the demo data at SP=2 on 2 processes, see a bad value's one-line error,
preview the YAML and command, start a run and watch its loss points arrive and the run finish, then
stop a second run after its first checkpoint and resume it to the end. Nothing leaves localhost.
Screenshots go to the test's tmp folder."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli_runner import REPO, start_cli

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("the browser test needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)
pytest.importorskip("gradio", reason="the board needs gradio (pip install 'ulysses-pro[board]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright")

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
MODEL = "tiny:llama?hidden_size=64&num_layers=2"
LOCAL = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/|^(data|blob|about):")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def board_url(tmp_path):
    """`ulysses-pro webui` in a process group of its own; its runs and it are ended afterwards."""
    from ulysses_pro.board.runs import descendants

    port = _free_port()
    server = start_cli(
        ["-m", "ulysses_pro", "webui", "--port", str(port), "--runs-dir", str(tmp_path / "runs")],
        {"GRADIO_ANALYTICS_ENABLED": "False"},
        log=tmp_path / "webui.log",
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "webui.log").read_text()
            time.sleep(0.3)
    yield url
    for pid in [server.pid, *descendants(server.pid)]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    server.wait(timeout=10)


class Page:
    """The few gestures the test needs on Gradio's components, by their elem_id."""

    def __init__(self, page):
        self.page = page

    def text(self, elem: str, value: str) -> None:
        self.page.locator(f"#{elem} textarea, #{elem} input").first.fill(value)

    def choose(self, elem: str, option: str) -> None:
        self.page.locator(f"#{elem} input[role=combobox]").click()
        self.page.locator(f'ul[role=listbox] li[aria-label="{option}"]').click()
        self.page.keyboard.press("Escape")

    def message(self) -> str:
        return self.page.locator("#board_message textarea").input_value()

    def click_for_message(self, button: str, timeout_s: float = 60) -> str:
        """Click, then wait for the message line to change."""
        before = self.message()
        self.page.locator(f"#{button}").click()
        self.wait(lambda: self.message() not in ("", before), timeout_s, f"a message after {button}")
        return self.message()

    def progress(self) -> str:
        return self.page.locator("#progress_line").inner_text()

    def wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.25)
        raise AssertionError(f"waited {timeout_s}s for {what}; progress: {self.progress()!r}")


def _steps(output_dir: Path) -> list[int]:
    path = output_dir / "trainer_log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if '"loss"' in line]


def test_browser_form_sp2_preview_start_curve_finish_then_stop_and_resume(board_url, tmp_path):
    outside: list[str] = []

    def route(request_route):
        if LOCAL.match(request_route.request.url):
            request_route.continue_()
        else:
            outside.append(request_route.request.url)
            request_route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1600})
            context.route("**/*", route)
            ui = Page(context.new_page())
            ui.page.goto(board_url)
            ui.page.wait_for_selector("#model_name_or_path")
            ui.text("model_name_or_path", MODEL)
            ui.choose("template", "chatml")
            ui.choose("finetuning_type", "full")
            ui.text("dataset_dir", str(REPO / "data"))
            ui.page.locator("#dataset_dir textarea").press("Enter")  # reads its dataset_info.json
            ui.choose("dataset", "demo_tasks")
            ui.choose("precision", "fp32")
            for elem, value in (("cutoff_len", "64"), ("per_device_train_batch_size", "2"),
                                ("gradient_accumulation_steps", "1"), ("max_steps", "4"),
                                ("logging_steps", "1"), ("save_steps", "2"), ("nproc", "2")):  # fmt: skip
                ui.text(elem, value)
            ui.text("max_samples", "32")
            ui.text("output_dir", str(tmp_path / "first"))

            # a bad value: the CLI's line, before anything starts
            ui.choose("sequence_parallel_size", "4")
            assert "must divide the number of processes (2)" in ui.click_for_message("preview_btn")
            assert ui.message().startswith("config error: ")
            ui.choose("sequence_parallel_size", "2")
            assert ui.click_for_message("preview_btn").startswith("ok")
            assert "sequence_parallel_size: 2" in ui.page.locator("#yaml_preview").inner_text()
            command = ui.page.locator("#command_preview textarea").input_value()
            assert command == f"NPROC_PER_NODE=2 ulysses-pro train {tmp_path / 'first' / 'webui_config.yaml'}"
            assert "auto: ulysses 2 x ring 1" in ui.page.locator("#sp_layout textarea").input_value()
            ui.page.screenshot(path=str(tmp_path / "1-preview.png"), full_page=True)

            assert ui.click_for_message("start_btn").startswith("started first")
            curves = ui.page.locator("#curves_line")
            ui.wait(lambda: re.search(r"loss: [1-9]\d* points", curves.inner_text()), 90, "the first loss points")
            ui.wait(lambda: ui.progress().startswith("first: finished"), 90, "the first run to finish")
            assert "step 4/4" in ui.progress() and "peak host rss GiB per rank" in ui.progress()
            ui.wait(lambda: "train_loss" in ui.page.locator("#final_metrics").inner_text(), 10, "final metrics")
            ui.wait(lambda: "loss: 4 points" in curves.inner_text(), 10, "all four loss points")
            ui.page.screenshot(path=str(tmp_path / "2-finished.png"), full_page=True)

            # a longer second run: stop it after its first checkpoint, then resume it to the end
            second = tmp_path / "second"
            ui.text("max_steps", "120")
            ui.text("save_steps", "10")
            ui.text("output_dir", str(second))
            assert ui.click_for_message("start_btn").startswith("started second")
            ui.wait(lambda: ui.progress().startswith("second: running") and "last checkpoint checkpoint-" in ui.progress(), 180, "a checkpoint of the second run")
            assert ui.click_for_message("stop_btn") == "second: stopped"
            ui.wait(lambda: ui.progress().startswith("second: stopped"), 10, "the stopped status")
            stopped_at = max(_steps(second))
            assert stopped_at < 120, "the run ended before it could be stopped"
            ui.page.screenshot(path=str(tmp_path / "3-stopped.png"), full_page=True)
            assert ui.click_for_message("resume_btn") == "second: resumed (start 2)"
            ui.wait(lambda: ui.progress().startswith("second: finished"), 120, "the resumed run to finish")
            assert "step 120/120" in ui.progress()
            assert "'loss'" in ui.page.locator("#run_log textarea").input_value()  # the log's live tail
            assert f"[webui] resuming from {second / 'checkpoint-'}" in (second / "webui_run.log").read_text()
            steps = _steps(second)
            assert steps == sorted(steps) and steps[-1] == 120 and len(steps) == len(set(steps))
            table = ui.page.locator("#runs_table").inner_text()
            assert re.search(r"second\s+finished\s+120/120", table) and re.search(r"first\s+finished\s+4/4", table)
            ui.page.screenshot(path=str(tmp_path / "4-resumed.png"), full_page=True)
        finally:
            browser.close()
    assert outside == [], f"the page asked for more than localhost: {outside}"

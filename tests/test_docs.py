"""The documentation site (mkdocs.yml, docs/) builds, and README.md stays a short front door."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI_TEST_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e ".[test,deepspeed,crosscheck]"'
    " && ruff check src tests && pytest -q"
)


def test_the_documentation_site_builds_with_broken_links_as_errors(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"


def test_the_readme_stays_a_front_door():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) < 12_000, f"README.md is {len(readme)} bytes; move detail into docs/"
    assert CI_TEST_COMMAND in readme.decode("utf-8").splitlines()

"""The built-in tokenizer: exact roundtrips, digit splitting, the ChatML template and its prefix property."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ulysses_pro.models.tokenizer import BUILTIN_TOKENIZER_DIR, load_builtin_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok():
    return load_builtin_tokenizer()


CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Count from 3 to 7."},
    {"role": "assistant", "content": "3 4 5 6 7"},
    {"role": "user", "content": "What day comes after Monday?"},
    {"role": "assistant", "content": "Tuesday"},
    {"role": "user", "content": "Give the opposite of hot."},
    {"role": "assistant", "content": "cold"},
]


def test_vocab_and_special_tokens(tok) -> None:
    assert len(tok) == 1024
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|endoftext|>", "<|im_end|>", None)
    assert "<|im_start|>" in tok.all_special_tokens
    # Special tokens are atomic even when written inside ordinary text.
    assert tok.encode("a<|im_start|>b<|im_end|>c<|endoftext|>").count(1) == 1


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading and trailing spaces  ",
        "tabs\tand\nnew\n\nlines\r\n",
        "naïve café, Ünïcödé, Straße, ÅÆØ",
        "e\u0301 (decomposed accent) and é (composed)",  # no NFC normalisation: bytes survive as given
        "中文字符, 日本語のテキスト, 한국어",
        "emoji 🌍🚀👩‍💻 and symbols ∑∫√≈≠ ← →",
        "numbers 0 7 42 3.14159 -12 1,000,000 2024-11-23",
        "code: def f(x):\n    return x ** 2  # comment",
        "<|im_start|>user\nhi<|im_end|>\n",
        "",
    ],
)
def test_roundtrip_exact(tok, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_roundtrip_corpus(tok) -> None:
    text = (REPO_ROOT / "src" / "ulysses_pro" / "assets" / "corpus.txt").read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # The corpus is in-domain: BPE should compress it well below one token per character.
    assert len(ids) < len(text) / 2.5


def test_digits_split_individually(tok) -> None:
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]
    assert [t for t in tok.tokenize("in 2024, 365 days") if any(c.isdigit() for c in t)] == list("2024365")
    # Vocabulary-wide: no learned token contains a digit next to anything else, so a number always
    # tokenizes digit by digit regardless of context.
    for token, _ in tok.get_vocab().items():
        text = tok.convert_tokens_to_string([token])
        if any(c in "0123456789" for c in text):
            assert len(text) == 1, token


def test_chat_template_chatml(tok) -> None:
    rendered = tok.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert rendered == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nCount from 3 to 7.<|im_end|>\n"
        "<|im_start|>assistant\n3 4 5 6 7<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True)
    # No default system prompt is injected.
    assert prompt == "<|im_start|>user\nCount from 3 to 7.<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_prefix_property(tok) -> None:
    for k in range(1, len(CONVERSATION)):
        shorter = tok.apply_chat_template(CONVERSATION[:k], tokenize=False)
        longer = tok.apply_chat_template(CONVERSATION[: k + 1], tokenize=False)
        assert longer.startswith(shorter) and len(longer) > len(shorter)
        # Holds at the token level too: every turn ends in "<|im_end|>\n" and the next starts with a
        # special token, so no BPE merge can straddle a turn boundary.
        assert tok.encode(longer)[: len(tok.encode(shorter))] == tok.encode(shorter)


def test_assistant_mask_from_generation_block(tok) -> None:
    out = tok.apply_chat_template(
        CONVERSATION[:5], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == "3 4 5 6 7<|im_end|>Tuesday<|im_end|>"


def test_assets_small_and_reproducible(tmp_path: Path) -> None:
    files = sorted(BUILTIN_TOKENIZER_DIR.iterdir())
    assert {p.name for p in files} >= {"tokenizer.json", "tokenizer_config.json"}
    assert sum(p.stat().st_size for p in files) < 300_000
    # A fresh build must reproduce the shipped files byte for byte (catches stale assets).
    spec = importlib.util.spec_from_file_location(
        "build_tokenizer", REPO_ROOT / "scripts" / "build_tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save(tmp_path)
    names = [p.name for p in files]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path, BUILTIN_TOKENIZER_DIR, names, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_loads_offline(tmp_path: Path) -> None:
    # A fresh interpreter with the hub forced offline and an empty cache: loading must not need either.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = "from ulysses_pro.models.tokenizer import load_builtin_tokenizer as f; print(len(f()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1024"
    assert BUILTIN_TOKENIZER_DIR.is_relative_to(REPO_ROOT / "src" / "ulysses_pro")


def test_demo_task_answers_are_short(tok) -> None:
    path = REPO_ROOT / "data" / "demo_tasks.json"
    if not path.exists():
        pytest.skip("data/ not generated (python scripts/make_demo_data.py)")
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert max(len(tok.encode(r["output"])) for r in rows) <= 20

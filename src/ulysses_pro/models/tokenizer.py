"""The built-in tokenizer shipped with the package.

A 1024-token byte-level BPE with a ChatML chat template, trained by ``scripts/build_tokenizer.py`` on text
that lives in this repository. It exists so that tests, the quickstart and tiny random models work fully
offline: no hub download is ever needed. Special tokens: ``<|endoftext|>`` (id 0, pad and document
separator), ``<|im_start|>`` (id 1) and ``<|im_end|>`` (id 2, eos: it closes every chat turn).
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

# Resolved from this file rather than the working directory so it works from an installed wheel too
# (pyproject ships ``assets/**/*`` as package data).
BUILTIN_TOKENIZER_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"


def load_builtin_tokenizer() -> PreTrainedTokenizerFast:
    """Load the built-in tokenizer from the package assets, never touching the network.

    A fresh object is returned on every call (no caching) because callers mutate tokenizers, e.g.
    ``padding_side`` or ``model_max_length``.
    """
    if not (BUILTIN_TOKENIZER_DIR / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"built-in tokenizer assets missing at {BUILTIN_TOKENIZER_DIR}; "
            "regenerate them with `python scripts/build_tokenizer.py`"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_TOKENIZER_DIR), local_files_only=True)

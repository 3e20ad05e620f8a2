"""Tiny random models: every family builds, trains a step, saves/loads exactly and is seed deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ulysses_pro.models.tiny import (
    QUICKSTART_SIZE,
    TINY_ARCHES,
    build_tiny_config,
    build_tiny_model,
    count_parameters,
    make_tiny_model,
)
from ulysses_pro.models.tokenizer import load_builtin_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_builtin_tokenizer()


def _batch(tok, seq_len: int = 12) -> dict[str, torch.Tensor]:
    # Two rows, the second right-padded, so the attention mask path is exercised as well.
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (2, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, -4:], mask[1, -4:] = tok.pad_token_id, 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_forward_backward(arch: str, tok) -> None:
    model = build_tiny_model(arch, tok)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    out = model(**_batch(tok), use_cache=False)
    assert out.logits.shape == (2, 12, len(tok))
    # Random init over 1024 tokens: the loss starts near ln(1024) = 6.93.
    assert 6.0 < out.loss.item() < 8.0
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_full_attention_everywhere(arch: str) -> None:
    config = build_tiny_config(arch, 1024, num_layers=3)
    assert config._attn_implementation == ("eager" if arch == "gemma2" else "sdpa")
    window = getattr(config, "sliding_window", None)
    assert window is None or window >= config.max_position_embeddings
    assert set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    assert getattr(config, "attn_logit_softcapping", None) is None
    assert config.head_dim == 16  # qwen3 / gemma would otherwise default to 128 / 256


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_save_load_roundtrip(arch: str, tok, tmp_path: Path) -> None:
    out_dir = make_tiny_model(arch, tmp_path / arch, seed=1)
    assert (out_dir / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    reference = build_tiny_model(arch, tok, seed=1, **QUICKSTART_SIZE).eval()
    batch = _batch(tok)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, reference(**batch).logits)
    assert loaded.config.tie_word_embeddings == reference.config.tie_word_embeddings
    # AutoTokenizer may pick a family-specific class (qwen2 -> Qwen2Tokenizer, which rebuilds its own
    # pre-tokenizer and NFC normaliser); it must still tokenize our text exactly like the built-in one.
    loaded_tok = AutoTokenizer.from_pretrained(out_dir)
    text = tok.apply_chat_template(
        [
            {"role": "user", "content": "Count from 13 to 17, please!"},
            {"role": "assistant", "content": "13 14"},
        ],
        tokenize=False,
    )
    assert loaded_tok.encode(text) == tok.encode(text)
    assert (loaded_tok.eos_token_id, loaded_tok.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert loaded_tok.chat_template == tok.chat_template


@pytest.mark.parametrize("arch", ["llama", "gemma2", "phi3"])
def test_seed_determinism(arch: str, tok) -> None:
    a = build_tiny_model(arch, tok, seed=7).state_dict()
    b = build_tiny_model(arch, tok, seed=7).state_dict()
    c = build_tiny_model(arch, tok, seed=8).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_global_rng_untouched(tok) -> None:
    state = torch.get_rng_state()
    build_tiny_model("llama", tok, seed=3)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kv_heads", [1, 2, None])
@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_gqa_kv_heads(arch: str, kv_heads: int | None, tok) -> None:
    model = build_tiny_model(arch, tok, num_heads=4, num_kv_heads=kv_heads)
    expected = 4 if kv_heads is None else kv_heads
    assert model.config.num_key_value_heads == expected
    attn = model.model.layers[0].self_attn
    if arch == "phi3":  # fused q|k|v projection
        assert attn.qkv_proj.out_features == (4 + 2 * expected) * 16
    else:
        assert attn.k_proj.out_features == attn.v_proj.out_features == expected * 16
    with torch.no_grad():
        assert torch.isfinite(model(**_batch(tok)).logits).all()


def test_head_dim_override(tok) -> None:
    # head_dim decoupled from hidden_size / num_heads, as in qwen3 and gemma checkpoints.
    model = build_tiny_model("qwen3", tok, hidden_size=64, num_heads=4, head_dim=8)
    assert model.model.layers[0].self_attn.q_proj.out_features == 32
    with torch.no_grad():
        model(**_batch(tok))


def test_errors() -> None:
    with pytest.raises(
        ValueError,
        match="valid choices: llama, qwen2, qwen3, qwen3_moe, mistral, gemma, gemma2, gemma3, phi3, or any",
    ):
        build_tiny_config("gpt5_imaginary", 1024)
    with pytest.raises(ValueError, match="valid choices"):
        build_tiny_model("nope")
    with pytest.raises(ValueError, match=r"valid choices: \[1, 2, 4\]"):
        build_tiny_config("llama", 1024, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_config("llama", 1024, hidden_size=66, num_heads=4)


@pytest.mark.parametrize("arch", TINY_ARCHES)
def test_quickstart_size(arch: str, tok) -> None:
    n_params = count_parameters(build_tiny_model(arch, tok, **QUICKSTART_SIZE))
    assert 500_000 < n_params < 2_000_000

"""`ulysses-pro chat`: one-shot `--prompt` and the line-by-line loop, greedy answers checked."""

from __future__ import annotations

import io
import json
import sys

import torch

from ulysses_pro.cli import main
from ulysses_pro.config.args import DataArguments
from ulysses_pro.data.templates import chat_format
from ulysses_pro.models.tiny import make_tiny_model


def chat_config(tmp_path, model_dir) -> str:
    config = {
        "model_name_or_path": str(model_dir),
        "template": "chatml",
        "finetuning_type": "full",
        "do_sample": False,
        "max_new_tokens": 6,
        "default_system": "Be brief.",
    }
    path = tmp_path / "chat.yaml"
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in config.items()))
    return str(path)


def greedy_answer(model_dir, messages) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template = chat_format(tokenizer, DataArguments(template="chatml"))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([template.prompt_ids(tokenizer, messages)])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=6,
        eos_token_id=template.stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_one_shot_prompt_streams_the_greedy_answer(tmp_path, capsys):
    model_dir = make_tiny_model("llama", tmp_path / "model")
    assert main(["chat", chat_config(tmp_path, model_dir), "--prompt", "Count from 3 to 9."]) == 0
    printed = capsys.readouterr().out
    expected = greedy_answer(
        model_dir,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count from 3 to 9."}],
    )
    assert expected.strip() and printed.rstrip("\n").endswith(expected)


def test_the_loop_keeps_history_clears_it_and_exits(tmp_path, capsys, monkeypatch):
    model_dir = make_tiny_model("llama", tmp_path / "model")
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\nAgain\nclear\nHi\nexit\nnever read\n"))
    assert main(["chat", chat_config(tmp_path, model_dir)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Assistant: ")]
    assert len(lines) == 3
    system = {"role": "system", "content": "Be brief."}
    first = greedy_answer(model_dir, [system, {"role": "user", "content": "Hi"}])
    second = greedy_answer(
        model_dir,
        [
            system,
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "Again"},
        ],
    )
    assert lines[0] == f"Assistant: {first}" and lines[1] == f"Assistant: {second}"
    assert lines[2] == lines[0]  # after `clear` the same question gets the first answer again

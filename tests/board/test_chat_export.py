"""The Chat and Export tabs' actions (no browser): a LoRA run's folder is its adapter, replies stream
greedily from serve's ChatEngine, and export merges the adapter into a folder transformers loads."""

from __future__ import annotations

import pytest
import torch

from tests.commands.test_export import lora_adapter
from ulysses_pro.board.actions import Board
from ulysses_pro.board.checks import InputError
from ulysses_pro.board.form import to_yaml
from ulysses_pro.board.runs import CONFIG_FILE
from ulysses_pro.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A base model and a folder laid out like a finished LoRA run the board started."""
    root = tmp_path_factory.mktemp("chat")
    base = make_tiny_model("llama", root / "base", hidden_size=64, num_layers=2)
    run = root / "runs" / "lora-run"
    run.mkdir(parents=True)
    lora_adapter(base, run)
    config = {"model_name_or_path": str(base), "finetuning_type": "lora", "template": "chatml"}
    (run / CONFIG_FILE).write_text(to_yaml(config, 1))
    return root, base, run


def test_a_lora_runs_folder_is_its_adapter_and_chat_streams_the_greedy_answer(lora_run):
    root, base, run = lora_run
    board = Board(root / "runs")
    assert board.model_of_run(str(run)) == (str(base), str(run), "chatml")
    with pytest.raises(InputError, match="load a model first"):
        next(board.chat.reply([], "hi", 4))
    assert board.load_chat(str(base), str(run), "chatml", 6).startswith("loaded")
    pieces = list(board.chat.reply([], "count to three", 6))
    assert pieces and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))  # each piece grows the last
    history = [{"role": "user", "content": "count to three"}, {"role": "assistant", "content": pieces[-1]}]
    again = list(board.chat.reply([], "count to three", 6))
    assert again[-1] == pieces[-1]  # greedy: the same answer twice
    assert list(board.chat.reply(history, "and four?", 6))  # a second turn answers too
    board.chat.unload()
    assert board.chat.engine is None
    with pytest.raises(InputError, match="model_name_or_path"):
        board.load_chat("", "", "", 6)


def test_export_merges_the_runs_adapter_into_a_folder_transformers_loads(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    root, base, run = lora_run
    board = Board(root / "runs")
    model, adapter, template = board.model_of_run(str(run))
    assert board.export(model, adapter, template, str(tmp_path / "merged"), 1) == f"exported to {tmp_path / 'merged'}"
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(merged(ids).logits, plain(ids).logits)  # the adapter is in the weights
    with pytest.raises(InputError, match="export_dir"):
        board.export(model, adapter, template, "", 1)

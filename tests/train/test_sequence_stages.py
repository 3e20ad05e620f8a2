"""dpo / kto / rm end to end on one process: starting losses, logged metrics, references, value head."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from ulysses_pro.config import load_config
from ulysses_pro.models.value_head import (
    VALUE_HEAD_FILE,
    attach_value_head,
    load_value_head,
    value_head_output,
)
from ulysses_pro.train.stages import run_stage

from .harness import run_training

DATA = str(Path(__file__).resolve().parents[2] / "data")
LOGGED = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
}


def keys(tmp_path, stage, dataset, **extra):
    return {
        "stage": stage,
        "dataset": dataset,
        "dataset_dir": DATA,
        "max_samples": 16,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "cutoff_len": 64,
        "output_dir": str(tmp_path / stage),
        "logging_steps": 1,
        "disable_tqdm": True,
        **extra,
    }


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_dpo_starts_at_log_two_and_logs_rewards(tmp_path, finetuning_type):
    """Policy == reference at step 0: sigmoid DPO loss is log 2, every reward 0."""
    result = run_training(**keys(tmp_path, "dpo", "demo_pairs", finetuning_type=finetuning_type))
    assert abs(result["losses"][0] - math.log(2)) < 1e-6
    assert LOGGED <= result["metrics"].keys()
    assert result["losses"][1] != result["losses"][0]  # the policy moved away from the reference


def test_kto_starts_at_half_the_weight(tmp_path):
    """At step 0 every log-ratio and z0 is 0, so each loss is weight x (1 - sigmoid(0))."""
    result = run_training(**keys(tmp_path, "kto", "demo_kto", kto_chosen_weight=1.0, kto_rejected_weight=1.0))
    assert abs(result["losses"][0] - 0.5) < 1e-6
    assert {"rewards/chosen", "rewards/rejected", "kl"} <= result["metrics"].keys()


def test_ref_model_path_matches_the_frozen_copy(tmp_path):
    """`ref_model` loading the same initial weights gives exactly the frozen-copy run."""
    copy = run_training(**keys(tmp_path, "dpo", "demo_pairs", max_steps=3))
    loaded = run_training(**keys(tmp_path, "dpo", "demo_pairs", max_steps=3, ref_model="tiny:llama"))
    assert copy["losses"] == pytest.approx(loaded["losses"], rel=1e-6)


def test_reference_free_losses_load_no_reference(tmp_path):
    config = load_config(
        keys(
            tmp_path,
            "dpo",
            "demo_pairs",
            pref_loss="simpo",
            max_steps=1,
            report_to="none",
            do_train=True,
            model_name_or_path="tiny:llama",
            finetuning_type="full",
        )
    )
    trainer = run_stage(config)
    assert trainer.reference is None


def test_lora_reference_is_the_base_model(tmp_path):
    """The LoRA reference scores with the adapters disabled: equal to the untrained base model."""
    config = load_config(
        keys(
            tmp_path,
            "dpo",
            "demo_pairs",
            max_steps=2,
            learning_rate=1e-2,
            report_to="none",
            do_train=True,
            model_name_or_path="tiny:llama",
            finetuning_type="lora",
            save_strategy="no",
        )
    )
    trainer = run_stage(config)
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("last_token_mask")
    model = trainer.model
    policy = trainer.sequence_logps(model, batch)
    reference = trainer.reference_logps(model, batch)
    base_config = load_config(
        {
            "model_name_or_path": "tiny:llama",
            "finetuning_type": "full",
            "stage": "dpo",
            "output_dir": str(tmp_path / "b"),
            "report_to": "none",
        }
    )
    from ulysses_pro.models.loader import load_model, load_tokenizer

    base = load_model(
        base_config.model,
        base_config.finetuning,
        load_tokenizer(base_config.model),
        base_config.training,
        is_trainable=False,
    )
    expected = trainer.sequence_logps(base, batch)
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(policy, reference)  # training moved the adapters


def test_reward_model_saves_and_reloads_its_value_head(tmp_path):
    config = load_config(
        keys(
            tmp_path,
            "rm",
            "demo_chat_pairs",
            report_to="none",
            do_train=True,
            model_name_or_path="tiny:llama",
            finetuning_type="lora",
        )
    )
    trainer = run_stage(config)
    assert {"rewards/accuracies", "rewards/margins"} <= set(trainer.state.log_history[0])
    out = Path(config.training.output_dir)
    assert (out / VALUE_HEAD_FILE).is_file() and (out / "adapter_model.safetensors").is_file()
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    trainer.model.eval()
    with torch.no_grad():
        trained = trainer.rewards(trainer.model, batch)
    model = trainer.model
    attach_value_head(model, seed=123)  # a different head ...
    with torch.no_grad():
        assert not torch.allclose(trainer.rewards(model, batch), trained)
    assert load_value_head(model, out)  # ... until the saved one is loaded back
    with torch.no_grad():
        torch.testing.assert_close(trainer.rewards(model, batch), trained)


def test_value_head_reads_every_token(tmp_path):
    from ulysses_pro.models.tiny import build_tiny_model

    model = build_tiny_model("llama")
    head = attach_value_head(model, seed=0)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with value_head_output(model):
        scores = model(input_ids=ids).logits
    assert scores.shape == (2, 7)
    hidden = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(scores, head(hidden).squeeze(-1))
    assert not model.get_output_embeddings().weight.requires_grad or model.config.tie_word_embeddings


@pytest.mark.parametrize("pref_loss", ["sigmoid", "orpo"])
def test_split_backward_gives_the_same_training(tmp_path, pref_loss):
    """Chosen and rejected back-propagated one after the other: same losses and gradients, GA 2."""
    from .harness import relative_error

    common = keys(
        tmp_path,
        "dpo",
        "demo_pairs",
        max_steps=3,
        gradient_accumulation_steps=2,
        pref_loss=pref_loss,
        pref_ftx=0.3,
    )
    joint = run_training(**common)
    split = run_training(**{**common, "pref_split_backward": True})
    assert split["losses"] == pytest.approx(joint["losses"], rel=1e-6)
    assert max(relative_error(a, b) for a, b in zip(joint["grads"], split["grads"])) < 1e-5


@pytest.mark.parametrize("stage, dataset", [("sft", "demo_tasks"), ("dpo", "demo_pairs")])
def test_neftune_noises_training_forwards_only(tmp_path, stage, dataset):
    """lr 0 keeps the weights, so only the noise can change a loss: training losses move, eval losses and
    (for DPO) the reference do not."""
    common = keys(tmp_path, stage, dataset, max_steps=1, learning_rate=0.0, do_eval=True, val_size=4)
    plain = run_training(**common)
    noisy = run_training(**common, neftune_noise_alpha=20.0)
    assert abs(noisy["losses"][0] - plain["losses"][0]) > 1e-4
    assert noisy["eval_losses"] == pytest.approx(plain["eval_losses"], rel=1e-6)
    if stage == "dpo":
        # Eval: policy == reference, loss log 2 exactly; training: only the policy was noised.
        assert noisy["eval_losses"][0] == pytest.approx(math.log(2), abs=1e-6)
        assert abs(noisy["metrics"]["rewards/margins"]) > 0


class RecordFirstLayerInputs(TrainerCallback):
    """Keeps what the first decoder layer receives (the possibly noised embeddings) on every forward."""

    def __init__(self):
        self.inputs: list[torch.Tensor] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        layer = model.model.layers[0]
        layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        if module.training:  # not the sample generations after training
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs.append(hidden.detach().clone())


def test_split_backward_replays_the_neftune_noise(tmp_path):
    """The surrogate forwards of pref_split_backward must see the noise the log-prob pass saw, or the
    gradient would not be the loss's."""
    recorder = RecordFirstLayerInputs()
    common = keys(
        tmp_path, "dpo", "demo_pairs", max_steps=1, neftune_noise_alpha=20.0, pref_split_backward=True
    )
    run_training(callbacks=(recorder,), **common)
    # One step: chosen and rejected without grad, then chosen and rejected again with grad.
    no_grad_chosen, no_grad_rejected, chosen, rejected = recorder.inputs
    assert torch.equal(no_grad_chosen, chosen) and torch.equal(no_grad_rejected, rejected)
    clean = RecordFirstLayerInputs()
    run_training(callbacks=(clean,), **{k: v for k, v in common.items() if k != "neftune_noise_alpha"})
    assert not torch.allclose(clean.inputs[0], chosen)  # the noise was there to replay

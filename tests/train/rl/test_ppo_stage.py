"""The ppo stage's pieces: config checks, the reward model's scores, the controllers, the example."""

from __future__ import annotations

import json

import pytest
import torch

from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.train.rl.controllers import AdaptiveKLController, RunningMoments

from ...cli_runner import run_cli
from .reward_models import write_reward_models


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    return write_reward_models(tmp_path_factory.mktemp("ppo_reward_models"))


def _ppo(**keys):
    base = {
        "stage": "ppo",
        "model_name_or_path": "tiny:llama",
        "dataset": "demo_tasks",
        "do_train": True,
        "reward_model": "somewhere",
    }
    return load_config({**base, **keys})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"reward_model": None}, "reward_model: stage ppo needs a reward model"),
        ({"reward_model_type": "api"}, "`api` (a reward server) is not supported"),
        ({"reward_model_type": "lora", "finetuning_type": "full"}, "needs reward_model_type: full"),
        (
            {"reward_model_type": "lora", "reward_model_adapters": "a"},
            "only a full reward model takes adapters",
        ),
        ({"ppo_epochs": 0}, "ppo_epochs: must be >= 1"),
        ({"ppo_target": 0}, "ppo_target: must be positive"),
        ({"neat_packing": True}, "stage ppo samples completions per prompt"),
    ],
)
def test_bad_ppo_settings_are_refused_by_key(keys, message):
    with pytest.raises(ConfigError) as caught:
        _ppo(**{"finetuning_type": "lora", **keys})
    assert message in str(caught.value)


def test_the_kl_coefficient_moves_toward_the_target_at_most_twenty_percent_per_horizon():
    control = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=100)
    control.update(current_kl=60.0, n_steps=10)  # far above: the error is clipped to +0.2
    assert control.value == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    control.update(current_kl=3.0, n_steps=10)  # half the target: -0.5, clipped to -0.2
    assert control.value == pytest.approx(0.2 * 1.02 * (1 - 0.02))
    control.update(current_kl=6.6, n_steps=50)  # +0.1
    assert control.value == pytest.approx(0.2 * 1.02 * 0.98 * 1.05)


def test_running_score_moments_equal_the_moments_of_every_score_so_far():
    first, second = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([-3.0, 0.5, 7.0, 2.0])
    moments = RunningMoments()
    moments.update(first, total=lambda x: x)
    moments.update(second, total=lambda x: x)
    everything = torch.cat([first, second]).double()
    assert moments.mean == pytest.approx(float(everything.mean()))
    assert moments.std == pytest.approx(float(everything.std()))  # unbiased, as TRL's
    normalised = moments.normalise(torch.tensor([float(everything.mean())]))
    assert float(normalised) == pytest.approx(0.0, abs=1e-9)


def _direct_scores(kind, paths, ids):
    """The reward model's value head at the last token, loaded the plain way (no SP, no adapter switch)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ulysses_pro.models.loader import load_model, load_tokenizer

    from ..harness import training_config

    if kind == "full":
        model = AutoModelForCausalLM.from_pretrained(paths["full"])
    else:
        config = training_config(
            stage="sft", finetuning_type="full", dataset="demo_tasks", output_dir="/tmp/x"
        )
        base = load_model(config.model, config.finetuning, load_tokenizer(config.model), config.training)
        model = PeftModel.from_pretrained(base, paths["lora"]).merge_and_unload()
    head = load_file(paths[kind] / "value_head.safetensors")
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, -1]
    return hidden @ head["v_head.summary.weight"].T.squeeze(-1) + head["v_head.summary.bias"]


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_reward_model_scores_the_last_token_and_leaves_the_policy_training(reward_models, kind, tmp_path):
    from ulysses_pro.models.loader import load_model, load_tokenizer
    from ulysses_pro.train.rl.reward_model import RewardModel
    from ulysses_pro.train.stages.ppo import _attach_critic

    config = _ppo(
        finetuning_type=kind,
        reward_model=str(reward_models[kind]),
        reward_model_type=kind,
        output_dir=str(tmp_path),
    )
    tokenizer = load_tokenizer(config.model)
    policy = _attach_critic(load_model(config.model, config.finetuning, tokenizer, config.training), config)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    reward = RewardModel.load(config, policy, tokenizer)
    ids = torch.tensor([[5, 9, 13, 2, 7], [4, 4, 8, 1, 3]])
    batch = {"input_ids": ids, "position_ids": torch.arange(5).expand(2, 5)}
    last = torch.zeros_like(ids)
    last[:, -1] = 1
    scores = reward.score(policy, batch, last, lambda x: x)
    expected = _direct_scores(kind, reward_models, ids)
    assert torch.allclose(scores, expected.squeeze(-1) if expected.dim() > 1 else expected, atol=1e-5)
    # scoring switched adapters and back: the policy trains what it trained before
    assert {name for name, p in policy.named_parameters() if p.requires_grad} == trainable
    if kind == "lora":
        assert policy.active_adapter == "default"
        assert any("lora_A.reward" in name for name, _ in policy.named_parameters())


def test_ppo_example_trains_through_the_cli(tmp_path, reward_models):
    """examples/ppo_quickstart.yaml as shipped, with real sampling, on a tiny model for two PPO steps."""
    out = tmp_path / "out"
    result = run_cli(
        [
            "-m",
            "ulysses_pro",
            "train",
            "examples/ppo_quickstart.yaml",
            "model_name_or_path=tiny:llama",
            f"reward_model={reward_models['lora']}",
            "max_steps=2",
            "ppo_epochs=2",
            "logging_steps=1",
            "max_samples=16",
            "per_device_train_batch_size=4",
            f"output_dir={out}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # 2 PPO steps x ppo_epochs 2, as LLaMA-Factory counts max_steps
    logs = [e for e in state["log_history"] if "loss" in e]
    assert len(logs) == 2  # logging_steps counts PPO steps too
    for key in (
        "reward",
        "kl",
        "kl_coef",
        "value_loss",
        "policy_loss",
        "clip_ratio",
        "completions/mean_length",
        "entropy",
    ):
        assert key in logs[0], key
    assert 1 <= logs[0]["completions/mean_length"] <= 12  # max_new_tokens: 12
    assert (out / "value_head.safetensors").exists()  # the critic travels with the policy
    assert (out / "training_reward.png").exists()


def test_ppo_resumes_between_ppo_steps_exactly(tmp_path, reward_models):
    """A checkpoint between PPO steps resumes with the same samples, KL coefficient and score
    moments: the resumed second step equals the uninterrupted one."""
    from ..harness import relative_error, run_training
    from ..test_sequence_parallel import DATA

    keys = {
        "stage": "ppo",
        "finetuning_type": "lora",
        "reward_model": str(reward_models["lora"]),
        "reward_model_type": "lora",
        "dataset": "demo_tasks",
        "dataset_dir": DATA,
        "template": "chatml",
        "max_samples": 16,
        "cutoff_len": 64,
        "max_new_tokens": 6,
        "per_device_train_batch_size": 2,
        "ppo_epochs": 2,
        "ppo_score_norm": True,
        "max_steps": 2,  # PPO steps: 4 optimizer updates
        "save_strategy": "steps",
        "save_steps": 1,  # every PPO step: checkpoint-2, checkpoint-4
    }
    whole = run_training(**keys, output_dir=str(tmp_path / "whole"))
    assert (tmp_path / "whole" / "checkpoint-2").is_dir()
    resumed = run_training(
        **keys,
        output_dir=str(tmp_path / "resumed"),
        resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"),
    )
    assert len(resumed["grads"]) == 2  # the second PPO step's two updates
    assert resumed["losses"][-1] == pytest.approx(whole["losses"][-1], abs=1e-6)
    for ours, theirs in zip(resumed["grads"], whole["grads"][2:]):
        assert relative_error(theirs, ours) <= 1e-6
    for key in ("reward", "kl_coef"):
        assert resumed["logged"][-1][key] == pytest.approx(whole["logged"][-1][key], abs=1e-7)

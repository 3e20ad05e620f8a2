"""Log-probs at the sampling distribution: the tiled head divides each chunk's logits by the
temperature, and the old log-probs a GRPO / PPO step stores are log_softmax(logits / T) of the policy
that sampled, at the sampled tokens."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.models.memory import token_loss_head
from ulysses_pro.models.tiny import build_tiny_model
from ulysses_pro.models.wrappers import unwrap_model
from ulysses_pro.parallel.reduce import IGNORE_INDEX
from ulysses_pro.train.rl.grpo_trainer import OLD_LOGPS, GrpoTrainer
from ulysses_pro.train.rl.ppo_trainer import PpoTrainer

from ..harness import run_training
from .fixed_rollouts import fixed_rollout_keys

TEMPERATURE = 0.7


def _reference_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at the targets, 0 where there is none: the whole-vocabulary formula."""
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * targets.ne(IGNORE_INDEX)


def test_the_tiled_head_divides_every_chunk_by_the_temperature(tokenizer):
    model = build_tiny_model("llama", tokenizer).eval()
    ids = torch.randint(3, len(tokenizer), (2, 11), generator=torch.Generator().manual_seed(0))
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), IGNORE_INDEX)], dim=1)
    targets[0, :4] = IGNORE_INDEX
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        entropies: list[torch.Tensor] = []
        # 3-token chunks: the division must happen in every chunk, not once on whole logits
        with token_loss_head(model, targets, chunk_tokens=3, entropies=entropies, temperature=TEMPERATURE):
            logps = -model(input_ids=ids).logits
    mask = targets.ne(IGNORE_INDEX)
    torch.testing.assert_close(logps, _reference_logps(logits, targets, TEMPERATURE), atol=1e-5, rtol=0)
    assert (logps - _reference_logps(logits, targets, 1.0))[mask].abs().max() > 1e-2
    tempered = torch.log_softmax(logits / TEMPERATURE, dim=-1)
    entropy = -(tempered.exp() * tempered).sum(-1) * mask
    torch.testing.assert_close(entropies[0], entropy, atol=1e-5, rtol=0)


def _independent_logps(model, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """Each row alone through the plain model (no padding, no tiled head)."""
    out = torch.zeros(batch["shift_labels"].shape)
    for i, (ids, targets) in enumerate(zip(batch["input_ids"], batch["shift_labels"])):
        length = int(batch["attention_mask"][i].sum())
        logits = model(input_ids=ids[None, :length]).logits[0]
        out[i, :length] = _reference_logps(logits, targets[:length], temperature)
    return out


@pytest.mark.parametrize(
    ("stage", "trainer_class", "keys"),
    [
        ("grpo", GrpoTrainer, {"num_iterations": 2}),
        pytest.param("ppo", PpoTrainer, {}, marks=pytest.mark.slow),
    ],
)
def test_stored_old_logps_are_log_softmax_of_logits_over_the_temperature(
    tmp_path, monkeypatch, stage, trainer_class, keys
):
    """Real rollouts (batched engine, T = 0.7): every stored old log-prob equals an independent
    log_softmax(logits / T) of the sampling policy at the sampled token."""
    checked: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    make_experience = trainer_class.make_experience

    def recording(self, prompt_batches):
        batches = make_experience(self, prompt_batches)
        model = unwrap_model(self.model)
        with torch.no_grad(), self.evaluating():  # before any update on them: the sampling policy
            for batch in batches:
                mask = batch["shift_labels"].ne(IGNORE_INDEX).cpu()
                checked.append(
                    (
                        batch[OLD_LOGPS].cpu(),
                        _independent_logps(model, batch, TEMPERATURE),
                        _independent_logps(model, batch, 1.0),
                        mask,
                    )
                )
        return batches

    monkeypatch.setattr(trainer_class, "make_experience", recording)
    run_training(
        **fixed_rollout_keys(
            stage,
            tmp_path,
            output_dir=str(tmp_path / "out"),
            max_steps=1,
            do_sample=True,
            temperature=TEMPERATURE,
            top_p=1.0,
            top_k=0,
            max_new_tokens=8,
            **keys,
        )
    )
    assert checked
    for stored, tempered, plain, mask in checked:
        assert mask.any()
        torch.testing.assert_close(stored[mask], tempered[mask], atol=1e-5, rtol=0)
        assert (stored - plain)[mask].abs().max() > 1e-2  # the model's own distribution is far off

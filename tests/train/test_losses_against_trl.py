"""Our preference and KTO losses against TRL's own code, where TRL installs beside our pins.

TRL (checked with 1.16) keeps the loss math inside `DPOTrainer._compute_loss` /
`KTOTrainer._compute_loss`, which also run the model. The test feeds them a stand-in `self` and a
stand-in model whose per-token log-probs sum to chosen per-sequence values, with precomputed
reference log-probs, and compares per-example results in float64. Skipped when TRL is absent (the
`[crosscheck]` extra installs it; CI does).
"""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

from ulysses_pro.train import losses as L

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_kto = pytest.importorskip("trl.trainer.kto_trainer")

WIDTH = 8  # tokens per stand-in sequence; completions start after token 0
ACCELERATOR = types.SimpleNamespace(
    device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x
)


def _mask(lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros(len(lengths), WIDTH, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, 1 : 1 + length] = 1
    return mask


def _model(outputs: dict[int, tuple[torch.Tensor, torch.Tensor]]):
    """Per-token log-probs spread evenly over each completion, summing to the wanted value."""

    def model(**inputs):
        logps, mask = outputs[id(inputs["input_ids"])]
        shifted = mask[:, 1:].double()
        per_token = shifted * (logps / shifted.sum(1)).unsqueeze(1)
        zeros = torch.zeros_like(per_token)
        return types.SimpleNamespace(
            log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    return model


def _common_self(**extra):
    return types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=ACCELERATOR,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05),
        ref_model=None,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        **extra,
    )


def _trl_dpo_pair(loss_type, beta, pc, pr, rc, rr, lc, lr) -> float:
    ids = torch.zeros(2, WIDTH, dtype=torch.long)
    mask = _mask([lc, lr])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": mask,
        "ref_chosen_logps": torch.tensor([rc], dtype=torch.float64),
        "ref_rejected_logps": torch.tensor([rr], dtype=torch.float64),
    }
    owner = _common_self(
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=0.5,
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
    )
    model = _model({id(ids): (torch.tensor([pc, pr], dtype=torch.float64), mask)})
    return float(trl_dpo.DPOTrainer._compute_loss(owner, model, inputs, return_outputs=False))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_losses_match_trl(loss_type):
    g = torch.Generator().manual_seed(3)
    n = 6
    pc, pr, rc, rr = (-(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1) for _ in range(4))
    lc, lr = torch.randint(1, WIDTH - 1, (n,), generator=g), torch.randint(1, WIDTH - 1, (n,), generator=g)
    beta = 0.2
    ours = L.preference_loss(
        L.PreferenceBatch(pc, pr, lc.double(), lr.double(), rc, rr), loss_type, beta
    ).losses
    theirs = [
        _trl_dpo_pair(loss_type, beta, *(float(t[i]) for t in (pc, pr, rc, rr)), int(lc[i]), int(lr[i]))
        for i in range(n)
    ]
    torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_kto_loss_matches_trl():
    g = torch.Generator().manual_seed(4)
    n = 6
    policy, reference, policy_kl, reference_kl = (
        -(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1) for _ in range(4)
    )
    desirable = torch.tensor([True, False, True, True, False, False])
    ids, kl_ids = torch.zeros(n, WIDTH, dtype=torch.long), torch.zeros(n, WIDTH, dtype=torch.long)
    mask, kl_mask = _mask([1, 2, 3, 4, 5, 6]), _mask([2, 3, 4, 5, 6, 1])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones_like(kl_ids),
        "KL_completion_mask": kl_mask,
        "label": desirable,
        "ref_logps": reference,
        "ref_KL_logps": reference_kl,
    }
    beta, wd, wu = 0.1, 1.3, 0.8
    owner = _common_self(
        calculate_KL=True, loss_type="kto", beta=beta, desirable_weight=wd, undesirable_weight=wu
    )
    owner._compute_kl_logps = types.MethodType(trl_kto.KTOTrainer._compute_kl_logps, owner)
    model = _model({id(ids): (policy, mask), id(kl_ids): (policy_kl, kl_mask)})
    theirs = float(trl_kto.KTOTrainer._compute_loss(owner, model, inputs, return_outputs=False))
    point = L.kto_reference_point(policy_kl, reference_kl)
    ours, _ = L.kto_loss(policy, reference, desirable, point, beta, wd, wu)
    # TRL averages desirable then undesirable losses over all examples: the same mean.
    assert float(ours.mean()) == pytest.approx(theirs, rel=1e-12)

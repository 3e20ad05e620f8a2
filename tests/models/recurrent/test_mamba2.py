"""Mamba-2 mixers (Bamba, Nemotron-H, Granite-MoE-hybrid, Falcon-H1, Zamba2) restart their convolution and scan state at
every packed document: a packed row gives each document the logits and gradients it gets alone."""

from __future__ import annotations

import pytest

from ulysses_pro.models.recurrent import mamba2, recurrent_mixers
from ulysses_pro.models.tiny import build_tiny_model

from .packing import assert_isolated_family_packs_exactly, packed_and_alone


@pytest.mark.parametrize("family", ["bamba", "nemotron_h", "granitemoehybrid", "falcon_h1", "zamba2"])
def test_packed_documents_compute_what_they_compute_alone(family):
    assert_isolated_family_packs_exactly(family)


def test_without_isolation_a_packed_document_reads_the_previous_one():
    model = build_tiny_model("bamba")
    packed, alone = packed_and_alone(model)
    assert (packed - alone).abs().max() > 1e-3


def test_groups_fewer_than_ranks_go_to_every_rank_that_reads_them():
    """One B/C group over 4 ranks: each rank's convolution rows are its heads' x channels and the
    one group's B and C channels."""
    model = build_tiny_model("bamba", mamba_n_groups=1)
    (_, mixer), *_ = recurrent_mixers(model)
    rows = mamba2._conv_rows(mixer, 4, 3)
    heads, d, n = mixer.num_heads, mixer.head_dim, mixer.ssm_state_size
    x_rows = list(range(3 * heads // 4 * d, heads * d))
    b_rows = list(range(mixer.intermediate_size, mixer.intermediate_size + n))
    c_rows = [row + n for row in b_rows]
    assert rows == x_rows + b_rows + c_rows

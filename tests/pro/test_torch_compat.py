"""Checkpoint loading keeps weights_only=True: exactly the needed classes are allowed, for the
duration of the load only, and anything else is refused with a clear error."""

from __future__ import annotations

import argparse
import pickle
import random

import numpy as np
import pytest
import torch

from ulysses_pro.pro.torch_compat import CheckpointError, safe_checkpoint_loading, safe_load


def _rng_state_file(path):
    """What Trainer writes to rng_state.pth: python, numpy and torch RNG states."""
    torch.save(
        {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
        path,
    )
    return path


def test_rng_states_with_numpy_arrays_load_with_weights_only(tmp_path):
    path = _rng_state_file(tmp_path / "rng_state.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # without the allow-list, numpy state is refused
    state = safe_load(path)
    np.testing.assert_array_equal(state["numpy"][1], np.random.get_state()[1])


def test_a_class_outside_the_allow_list_is_refused_with_its_name_and_file(tmp_path):
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {}, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace") as refusal:
        safe_load(path)
    assert str(path) in str(refusal.value)


def test_nothing_is_flipped_or_patched_globally(tmp_path):
    path = _rng_state_file(tmp_path / "rng_state.pth")
    before = set(torch.serialization.get_safe_globals())  # restored as a set: order may change
    load = torch.load
    with safe_checkpoint_loading(path):
        assert len(torch.serialization.get_safe_globals()) > len(before)
        torch.load(path, weights_only=True)
    assert set(torch.serialization.get_safe_globals()) == before
    assert torch.load is load
    with pytest.raises(CheckpointError), safe_checkpoint_loading(path):
        torch.save(argparse.Namespace(), tmp_path / "bad.pt")
        torch.load(tmp_path / "bad.pt", weights_only=True)
    assert set(torch.serialization.get_safe_globals()) == before  # also after a refusal
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the allow-list did not outlive the block

"""What the workflow decides from the model before training: checkpointing that DDP can follow."""

from __future__ import annotations

from ulysses_pro.config import load_config
from ulysses_pro.models.tiny import build_tiny_model
from ulysses_pro.train.workflow import checkpoint_shared_layers_without_reentry, layers_sharing_weights


def test_a_block_shared_by_decoder_layers_is_found():
    assert layers_sharing_weights(build_tiny_model("zamba2"))  # one transformer block, several layers
    assert not layers_sharing_weights(build_tiny_model("llama"))  # tied embeddings are not layers


def test_shared_layers_switch_checkpointing_to_non_reentrant(tmp_path):
    """Reentrant recomputation would make DDP see a shared weight ready twice (it stopped Zamba2)."""
    config = load_config(
        {"model_name_or_path": "tiny:zamba2", "output_dir": str(tmp_path), "use_reentrant_gc": True}
    )
    checkpoint_shared_layers_without_reentry(config, build_tiny_model("zamba2"))
    assert config.model.use_reentrant_gc is False
    config = load_config(
        {"model_name_or_path": "tiny:llama", "output_dir": str(tmp_path), "use_reentrant_gc": True}
    )
    checkpoint_shared_layers_without_reentry(config, build_tiny_model("llama"))
    assert config.model.use_reentrant_gc is True

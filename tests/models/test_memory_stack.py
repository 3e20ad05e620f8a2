"""The memory stack: checkpointing (LLaMA-Factory's default), host offload, tiled MLP, the token-
budgeted loss head and liger-kernel wiring; each exact against the plain model."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from ulysses_pro.config import ConfigError, load_config
from ulysses_pro.models import checkpointing, memory
from ulysses_pro.models.memory import LossHead, default_chunk_tokens, tiled_token_losses, token_loss_head
from ulysses_pro.models.memory_stack import apply_memory_stack
from ulysses_pro.models.tiled_mlp import tile_mlps
from ulysses_pro.models.tiny import build_tiny_model


def _loss_and_grads(model, ids, positions=None):
    model.zero_grad(set_to_none=True)
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    with token_loss_head(model, targets, chunk_tokens=7):
        losses = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    losses.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses.sum().item(), grads


def _model(arch="llama", lora=False, **sizes):
    model = build_tiny_model(arch, seed=3, **sizes)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj", "q_proj"])
        )
    model.train()
    return model


IDS = torch.randint(3, 500, (2, 37), generator=torch.Generator().manual_seed(1))


def _compare(a, b, rtol=1e-6):
    assert a[1].keys() == b[1].keys() and a[1]
    assert a[0] == pytest.approx(b[0], rel=rtol)
    for name in a[1]:
        # fp32 sums of a gradient of size g round at about 1e-7 g: the absolute tolerance is
        # taken relative to the tensor's largest entry (a reordered backward moves small ones).
        scale = max(1.0, a[1][name].abs().max().item())
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-5, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_tiled_mlp_matches_the_plain_mlp(lora):
    plain = _loss_and_grads(_model(lora=lora), IDS)
    tiled_model = _model(lora=lora)
    assert tile_mlps(tiled_model, 8) == 2
    calls = []
    layer_mlp = next(m.mlp for m in tiled_model.modules() if hasattr(m, "mlp"))
    real_forward = layer_mlp.forward
    layer_mlp.forward = lambda x: calls.append(x.shape[1]) or real_forward(x)
    _compare(plain, _loss_and_grads(tiled_model, IDS))
    assert calls == [37]  # one call from the layer; the tiles run inside it


def test_tiled_mlp_runs_tiles_in_forward_and_backward(monkeypatch):
    """Intermediates exist one tile at a time: the MLP body only ever sees <= tile tokens."""
    model = _model()
    seen = []
    for module in model.modules():
        if hasattr(module, "mlp"):
            module.mlp.act_fn.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    tile_mlps(model, 8)
    _loss_and_grads(model, IDS)
    assert seen and max(seen) == 8 and sum(seen) == 37 * 2 * 2  # 2 layers, forward + backward recompute


def test_tiled_mlp_leaves_mixture_of_experts_alone():
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    assert tile_mlps(AutoModelForCausalLM.from_config(config), 8) == 0


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointing_recomputes_layers_and_matches(reentrant):
    plain = _loss_and_grads(_model(), IDS)
    model = _model()
    checkpointing.enable_gradient_checkpointing(model, use_reentrant=reentrant)
    forwards = []
    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(lambda *a: forwards.append(1))
    _compare(plain, _loss_and_grads(model, IDS))
    assert len(forwards) == 2 * 2  # each layer forward, then recomputed in backward


@pytest.mark.parametrize("reentrant", [True, False])
def test_host_offload_is_exact_and_moves_each_layer_input(reentrant):
    """The checkpointed inputs (one b x s x hidden tensor per layer) go to host memory and come back,
    each but the first one backward needs copied back before it is needed (prefetch)."""
    model = _model()
    checkpointing.enable_gradient_checkpointing(model, use_reentrant=reentrant)
    kept = _loss_and_grads(model, IDS)
    offloaded = _model()
    hooks = checkpointing.enable_gradient_checkpointing(offloaded, use_reentrant=reentrant, offload=True)
    moved = _loss_and_grads(offloaded, IDS)
    assert moved[0] == kept[0]
    for name in kept[1]:
        assert torch.equal(moved[1][name], kept[1][name]), name  # copies, never changes: bit-identical
    hidden = offloaded.config.hidden_size
    assert hooks.offloaded_bytes == 2 * IDS.numel() * hidden * 4  # 2 layers x (2 x 37 x hidden) fp32
    # backward unpacks layer 1's input first and starts layer 0's copy back then: one served ahead
    assert hooks.prefetched == 1


def test_lora_with_reentrant_checkpointing_trains_frozen_embeddings_path():
    """Reentrant checkpointing needs an input that wants grad; the layer input is marked (frozen
    embeddings, LoRA), so adapters still get gradients, equal to the uncheckpointed ones."""
    plain = _loss_and_grads(_model(lora=True), IDS)
    model = _model(lora=True)
    checkpointing.enable_gradient_checkpointing(model, use_reentrant=True)
    _compare(plain, _loss_and_grads(model, IDS))


def test_checkpointing_is_on_by_default_and_follows_hf_keys():
    base = {"model_name_or_path": "tiny:llama", "stage": "sft", "output_dir": "/tmp/unused"}
    config = load_config(base)
    assert not config.model.disable_gradient_checkpointing and config.model.use_reentrant_gc
    assert not config.training.gradient_checkpointing  # ours does it; the Trainer must not redo it
    assert config.training.ddp_find_unused_parameters is False
    assert load_config({**base, "disable_gradient_checkpointing": True}).model.disable_gradient_checkpointing
    assert load_config({**base, "gradient_checkpointing": False}).model.disable_gradient_checkpointing
    switched = load_config(
        {**base, "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    )
    assert not switched.model.disable_gradient_checkpointing and not switched.model.use_reentrant_gc
    with pytest.raises(ConfigError, match="disable_gradient_checkpointing"):
        load_config({**base, "disable_gradient_checkpointing": True, "gradient_checkpointing": True})
    with pytest.raises(ConfigError, match="gradient_checkpointing_offload"):
        load_config({**base, "disable_gradient_checkpointing": True, "gradient_checkpointing_offload": True})


def test_loss_chunks_count_flattened_tokens(monkeypatch):
    """A chunk is `chunk` tokens of batch x seq together, not `chunk` positions of every row."""
    sizes = []
    real = memory._chunk_token_losses
    monkeypatch.setattr(memory, "_chunk_token_losses", lambda h, *a: sizes.append(h.shape) or real(h, *a))
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(4, 9, 16, requires_grad=True)
    targets = torch.randint(0, 50, (4, 9))
    losses = tiled_token_losses(hidden, head, targets, chunk_tokens=10)
    assert [s[0] for s in sizes] == [10, 10, 10, 6] and losses.shape == (4, 9)
    expected = F.cross_entropy(head(hidden).reshape(-1, 50), targets.reshape(-1), reduction="none").view(4, 9)
    torch.testing.assert_close(losses, expected)
    assert default_chunk_tokens(32_000) == 1048 and default_chunk_tokens(152_064) == 220


# ---------------------------------------------------------------------------------------------
# liger-kernel: a stand-in package records what is patched and computes the loss with torch.


@pytest.fixture
def liger_stand_in(monkeypatch):
    applied = []

    def _apply_liger_kernel_to_instance(model, **kwargs):
        applied.append(kwargs)

    def liger_fused_linear_cross_entropy(
        hidden, weight, target, bias=None, ignore_index=-100, reduction="mean", softcap=None
    ):
        assert reduction == "none"
        logits = F.linear(hidden, weight, bias).float()
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")

    package = types.ModuleType("liger_kernel")
    api = types.ModuleType("liger_kernel.transformers")
    api._apply_liger_kernel_to_instance = _apply_liger_kernel_to_instance
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_fused_linear_cross_entropy = liger_fused_linear_cross_entropy
    for name, module in [
        ("liger_kernel", package),
        ("liger_kernel.transformers", api),
        ("liger_kernel.transformers.functional", functional),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    versions = {"liger-kernel": "0.8.2"}
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: versions.get(name) or real_version(name))
    return applied, versions


def test_liger_kernel_patches_the_model_and_fuses_the_loss(liger_stand_in):
    applied, versions = liger_stand_in
    config = load_config({"model_name_or_path": "tiny:llama", "output_dir": "/tmp/unused"})
    config.model.enable_liger_kernel = True
    model = _model()
    head = apply_memory_stack(model, config.model, config.memory, training=True)
    assert applied == [
        {
            "rope": True,
            "rms_norm": True,
            "swiglu": True,
            "cross_entropy": False,
            "fused_linear_cross_entropy": False,
        }
    ]
    assert head.fused is not None
    targets = torch.roll(IDS, -1, dims=1)
    with token_loss_head(model, targets, head_options=head):
        fused = model(input_ids=IDS, use_cache=False).logits
    with token_loss_head(model, targets, head_options=LossHead()):
        tiled = model(input_ids=IDS, use_cache=False).logits
    torch.testing.assert_close(fused, tiled, rtol=1e-5, atol=1e-5)
    versions["liger-kernel"] = "0.6.5"  # per-token gradients of the fused loss are wrong before 0.8.2
    assert apply_memory_stack(_model(), config.model, config.memory, training=False).fused is None


def test_liger_kernel_is_never_accepted_and_ignored(monkeypatch):
    base = {"model_name_or_path": "tiny:llama", "output_dir": "/tmp/unused", "enable_liger_kernel": True}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else object()
    )
    with pytest.raises(ConfigError, match="enable_liger_kernel.*liger-kernel package"):
        load_config(base)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(ConfigError, match="enable_liger_kernel.*CUDA"):
        load_config(base)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma", "phi3"])
def test_efficient_rms_norm_is_exact_forward_and_backward(arch):
    """The forward is the module's own arithmetic (bit for bit); the backward is its gradient."""
    from ulysses_pro.models.efficient_norm import use_efficient_rms_norms

    plain = _loss_and_grads(_model(arch), IDS)
    model = _model(arch)
    expected = {"llama": 5, "qwen3": 9, "gemma": 5, "phi3": 5}[arch]  # 2 per layer + final (+ q/k norms)
    assert use_efficient_rms_norms(model) == expected
    swapped = _loss_and_grads(model, IDS)
    assert swapped[0] == plain[0]  # forward identical
    _compare(plain, swapped)


def test_weightless_rms_norms_keep_their_own_forward():
    """Falcon-Mamba normalises its 4-wide time step with a norm whose dummy 128-wide weight buffer is
    never used: swapping it would multiply by that buffer."""
    from ulysses_pro.models.efficient_norm import use_efficient_rms_norms
    from ulysses_pro.models.tiny import build_tiny_model

    model = build_tiny_model("falcon_mamba")
    weightless = [m for m in model.modules() if type(m).__name__ == "FalconMambaWeightlessRMSNorm"]
    assert weightless and use_efficient_rms_norms(model) > 0
    assert all("forward" not in m.__dict__ for m in weightless)
    model(input_ids=IDS, use_cache=False)


def test_a_deep_copy_after_the_memory_stack_uses_its_own_weights():
    """DPO's frozen reference is a deep copy of the prepared policy: its norms and tiled MLPs must
    read the copy's weights, not the policy's (a closure over the module would share them)."""
    import copy

    config = load_config({"model_name_or_path": "tiny:llama", "output_dir": "/tmp/unused", "tiled_mlp": True})
    config.memory.tiled_mlp_tile_tokens = 8
    policy = _model()
    apply_memory_stack(policy, config.model, config.memory, training=True)
    reference = copy.deepcopy(policy)
    before = reference(input_ids=IDS, use_cache=False).logits
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1.5)  # "training" the policy
    torch.testing.assert_close(reference(input_ids=IDS, use_cache=False).logits, before, rtol=0, atol=0)


def test_a_frozen_layer_is_neither_checkpointed_nor_made_to_want_grad():
    """transformers 5.25 calls a checkpointed layer as `partial(forward, layer, **kwargs)`: the layer
    is still found, so a frozen one (a VLM's vision blocks under `freeze_vision_tower`) runs plainly,
    and its input is not switched to require grad (which would back-propagate through it)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from ulysses_pro.models.checkpointing import checkpointing_function

    class Block(GradientCheckpointingLayer):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, hidden):
            return self.linear(hidden)

    calls = []
    plain = checkpointing_function(use_reentrant=True, offload=None)

    def spy(function, *args, **kwargs):
        calls.append(function)
        return plain(function, *args, **kwargs)

    block = Block()
    block.gradient_checkpointing, block._gradient_checkpointing_func = True, spy
    block.train()
    block.requires_grad_(False)
    hidden = torch.randn(2, 4)
    out = block(hidden)
    assert calls, "transformers did not route the call through the checkpointing function"
    assert not hidden.requires_grad and not out.requires_grad  # frozen: run plainly, no graph
    block.requires_grad_(True)
    assert block(hidden).requires_grad  # trainable: checkpointed, its input marked for reentry

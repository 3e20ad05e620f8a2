"""The memory planner: a meta-device trace of a training step, from the model's config alone."""

from __future__ import annotations

import pytest
import torch

from ulysses_pro.config import load_config
from ulysses_pro.planner import Layout, Options, longest_length, trace
from ulysses_pro.planner.report import parse_bytes
from ulysses_pro.planner.tensor_bytes import LiveTensorBytes, storage_bytes

SPEC = "tiny:llama?hidden_size=64&num_layers=3&num_heads=4&num_kv_heads=2&vocab_size=512&max_position_embeddings=1048576"


def _config(**keys):
    base = {"model_name_or_path": SPEC, "stage": "pt", "finetuning_type": "full", "output_dir": "/tmp/unused"}
    return load_config({**base, "per_device_train_batch_size": 1, **keys})


def test_memory_sizes_parse():
    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("3072MiB") == 3 * 2**30
    assert parse_bytes("141g") == 141 * 2**30 and parse_bytes("1.5 GB") == 1_500_000_000
    with pytest.raises(Exception, match="memory size"):
        parse_bytes("lots")


def _measured_peak(config, length):
    """The same step for real on the CPU (SP=1), counted with the same live-tensor instrument."""
    from ulysses_pro.models.loader import load_model
    from ulysses_pro.models.memory import token_loss_head
    from ulysses_pro.models.memory_stack import apply_memory_stack
    from ulysses_pro.models.tokenizer import load_builtin_tokenizer

    model = load_model(config.model, config.finetuning, load_builtin_tokenizer(), config.training)
    model.train()
    head = apply_memory_stack(model, config.model, config.memory, training=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=False)
    ids = torch.randint(3, 500, (1, length))

    def step():
        with token_loss_head(model, ids, head_options=head, reduction="sum"):
            model(input_ids=ids, position_ids=torch.arange(length)[None], use_cache=False).logits.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    states = [t for s in optimizer.state.values() for t in s.values()]
    with LiveTensorBytes(baseline=storage_bytes([*model.parameters(), *model.buffers(), *states])) as live:
        step()
    return live.peak


@pytest.mark.parametrize(
    "keys", [{}, {"disable_gradient_checkpointing": True}, {"tiled_mlp": True, "tiled_mlp_tile_tokens": 256}]
)
def test_traced_peak_matches_a_real_step(keys):
    """SP=1 on the CPU: the meta trace of the config against the same step run for real."""
    from ulysses_pro.planner.estimate import options_of

    config = _config(**keys)
    predicted = trace(config, Layout(), 2048, options_of(config), world=1, device="cpu").peak
    measured = _measured_peak(config, 2048)
    assert abs(predicted / measured - 1) < 0.05, (predicted, measured)


def test_options_and_sequence_parallelism_lower_the_peak():
    config = _config()
    plain = Options(checkpointing=False, tiled_mlp=False, offload=False)
    checkpointed = Options(checkpointing=True, tiled_mlp=False, offload=False)
    offloaded = Options(checkpointing=True, tiled_mlp=True, offload=True, tile_tokens=512)
    at = {name: trace(config, Layout(), 16384, o, world=1, device="cpu") for name, o in
          [("plain", plain), ("checkpointed", checkpointed), ("offloaded", offloaded)]}  # fmt: skip
    assert at["plain"].peak > at["checkpointed"].peak > at["offloaded"].peak
    assert at["offloaded"].host == 3 * 16384 * 64 * 4 and at["checkpointed"].host == 0  # 3 layer inputs, fp32
    sp2 = trace(config, Layout(ulysses=2), 16384, checkpointed, world=2, device="cpu")
    assert sp2.peak - sp2.static < at["checkpointed"].peak - at["checkpointed"].static


def test_longest_length_fits_and_the_next_step_does_not():
    config = _config()
    options = Options(checkpointing=True, tiled_mlp=False, offload=False)
    budget = 128 * 2**20
    length, estimate = longest_length(config, Layout(), options, budget, world=1, device="cpu", start=4096)
    assert length > 8192 and estimate.peak <= budget
    assert trace(config, Layout(), int(length * 1.05), options, world=1, device="cpu").peak > budget


def test_plan_command_prints_the_table(tmp_path, capsys):
    from ulysses_pro.cli import main

    config = tmp_path / "cfg.yaml"
    config.write_text(
        f'model_name_or_path: "{SPEC}"\nstage: pt\nfinetuning_type: lora\ncutoff_len: 4096\n'
        "per_device_train_batch_size: 1\nsequence_parallel_size: 2\noutput_dir: /tmp/unused\n"
    )
    assert main(["plan", str(config), "--gpu-memory", "96MiB", "--nproc", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "per rank at cutoff_len 4096, SP 2 (ulysses 2 x ring 1)" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all(line.count("|") == 7 for line in rows)


@pytest.mark.parametrize(
    "keys", [{}, {"finetuning_type": "lora"}, {"tiled_mlp": True, "gradient_checkpointing_offload": True}]
)
def test_deep_decoders_are_extrapolated_from_three_shallow_traces(keys, monkeypatch):
    """A 12-layer decoder: the extrapolation from 1, 2 and 3 layers equals the full-depth trace."""
    from ulysses_pro.models.loader import load_model_config
    from ulysses_pro.planner import estimate

    config = _config(model_name_or_path=SPEC.replace("num_layers=3", "num_layers=12"), **keys)
    depths = []
    real = estimate._trace_at_depth

    def counted(*args):
        depths.append(args[-1].num_hidden_layers)
        return real(*args)

    monkeypatch.setattr(estimate, "_trace_at_depth", counted)
    options = estimate.options_of(config)
    extrapolated = trace(config, Layout(ulysses=2), 8192, options, world=2, device="cpu")
    assert depths == [1, 2, 3]
    full = real(config, Layout(ulysses=2), 8192, options, 2, "cpu", load_model_config(config.model))
    for field in ("peak", "static", "host", "trainable"):
        assert abs(getattr(extrapolated, field) - getattr(full, field)) <= 0.002 * getattr(full, field), field


def test_fsdp2_shards_and_its_offload_move_the_static_memory_off_the_device():
    """FSDP2 over 4 ranks keeps a quarter of the weights and optimizer state plus one gathered layer;
    with `offload` they go to host memory and the device holds the gathered layer only."""
    options = Options(checkpointing=True, tiled_mlp=False, offload=False)
    replicated = trace(_config(), Layout(), 4096, options, world=4, device="cpu")
    sharded = trace(_config(fsdp="full_shard"), Layout(), 4096, options, world=4, device="cpu")
    offloaded = trace(_config(fsdp="full_shard offload"), Layout(), 4096, options, world=4, device="cpu")
    assert replicated.static > sharded.static > offloaded.static
    assert replicated.peak > sharded.peak > offloaded.peak
    assert offloaded.host > 0 and sharded.host == 0


def test_a_zero3_config_read_in_the_same_process_does_not_break_the_skeleton():
    """Reading a ZeRO-3 config makes transformers build every model inside zero.Init, which a
    meta-device skeleton cannot take (it stopped the planner in a process that had trained)."""
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        options = Options(checkpointing=True, tiled_mlp=False, offload=False)
        assert trace(_config(), Layout(), 1024, options, world=1, device="cpu").peak > 0
    finally:
        del zero3
        unset_hf_deepspeed_config()


def test_the_frozen_reference_is_counted_as_the_run_builds_it():
    """Full-parameter DPO in bf16: the planner's frozen bytes equal the reference copy the run makes
    (train/reference.py, compute dtype); LoRA's reference is the policy (nothing); FSDP2 over 4
    ranks holds a quarter of it plus one gathered layer."""
    from ulysses_pro.models.loader import compute_dtype_for, load_model
    from ulysses_pro.models.tokenizer import load_builtin_tokenizer
    from ulysses_pro.train.reference import ReferenceModel

    options = Options(checkpointing=True, tiled_mlp=False, offload=False)
    keys = {"stage": "dpo", "dataset": "demo_pairs", "bf16": True}
    config = _config(**keys)
    planned = trace(config, Layout(), 1024, options, world=1, device="cpu")
    policy = load_model(config.model, config.finetuning, load_builtin_tokenizer(), config.training)
    dtype = compute_dtype_for(config.training, config.finetuning)
    reference = ReferenceModel.build(policy, None, dtype)
    assert planned.frozen == storage_bytes(reference.frozen.parameters())
    assert planned.static > planned.frozen > 0
    assert trace(_config(**keys, finetuning_type="lora"), Layout(), 1024, options, world=1, device="cpu").frozen == 0
    sharded = trace(_config(**keys, fsdp="full_shard"), Layout(), 1024, options, world=4, device="cpu")
    layer = max(storage_bytes(layer.parameters()) for layer in reference.frozen.model.layers)
    assert sharded.frozen == planned.frozen // 4 + layer

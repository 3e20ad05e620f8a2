"""Per-rank peak memory of one optimizer step, traced on the meta device.

The skeleton (planner/skeleton.py) runs a warm-up step (so gradients and AdamW state exist as in
training) and then one measured step under `LiveTensorBytes`: forward with the run's loss head,
backward through checkpointed / tiled / offloaded layers, and the optimizer. Memory is linear in
the sequence length for this stack (no attention matrix is ever materialised), so the longest
trainable length comes from two traces and is then traced once more to confirm.

Frozen models beside the policy are counted as weights in the compute dtype, sharded like the
policy: the reference copy of full-parameter DPO / KTO / PPO / GRPO (train/reference.py) and PPO's
full reward model; a `ref_model` or reward model is taken to be the policy's size. Their no-grad
forwards' activations are not (they are freed layer by layer, below the training step's peak).

Not counted (they are not tensors): the CUDA context and kernels' workspaces (about 0.5-1 GiB on a
GPU), allocator fragmentation, NCCL buffers. Counted analytically: DDP's gradient buckets (a copy
of the gradients when more than one process replicates weights), and ZeRO-3 / FSDP sharding (the
weights, gradients and optimizer state divided by the world size, plus one gathered layer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch

from ..models.loader import load_model_config
from .simulate import simulated_sequence_parallel
from .skeleton import (
    Layout,
    build_skeleton,
    decoder_depth,
    decoder_layers,
    wire_planned_attention,
    with_depth,
)
from .tensor_bytes import LiveTensorBytes, storage_bytes

PAIRED_STAGES = ("dpo", "kto", "rm")  # two rows per example: chosen / rejected, or labelled / KL


@dataclass(frozen=True)
class Options:
    """The memory options a plan is traced with (the config's unless a table column overrides)."""

    checkpointing: bool
    tiled_mlp: bool
    offload: bool
    efficient_rms_norm: bool = True
    tile_tokens: int = 4096

    def describe(self) -> str:
        parts = ["checkpointing" if self.checkpointing else "no checkpointing"]
        if self.tiled_mlp:
            parts.append("tiled MLP")
        if self.offload:
            parts.append("offload")
        return " + ".join(parts)


@dataclass(frozen=True)
class Estimate:
    """Per-rank bytes of one step."""

    peak: int  # device bytes at the step's peak, static state included
    static: int  # weights, gradients, optimizer state, DDP buckets, frozen models (after sharding)
    host: int  # host bytes the offloaded checkpoints take
    trainable: int  # trainable parameters
    frozen: int = 0  # of `static`: the frozen reference / reward model weights


def options_of(config) -> Options:
    memory = config.memory
    return Options(
        checkpointing=not config.model.disable_gradient_checkpointing,
        tiled_mlp=memory.tiled_mlp,
        offload=memory.gradient_checkpointing_offload,
        efficient_rms_norm=memory.efficient_rms_norm,
        tile_tokens=memory.tiled_mlp_tile_tokens,
    )


def _sharded(config) -> bool:
    training = config.training
    if config.fsdp is not None:
        return True
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return bool(training.deepspeed) and is_deepspeed_zero3_enabled()


def _offloads_shards(config) -> bool:
    return config.fsdp is not None and config.fsdp.cpu_offload


def trace(
    config, layout: Layout, length: int, options: Options, *, world: int, device: str = "cuda"
) -> Estimate:
    """One step of `config` at sequence length `length` (per sample) on `layout`, per rank.

    Every field of the estimate is affine in the decoder's depth when its layers repeat (the
    same parameters, a period of `layer_types`): deep models are traced at one, two and three
    periods of layers and extrapolated, which keeps a plan of an 80-layer model as fast as a
    plan of a 3-layer one. The third trace checks the line; off the line (by 0.5%), or when the
    layers differ, the whole depth is traced.
    """
    model_config = load_model_config(config.model)
    depth = decoder_depth(model_config)
    period = _repeating_period(config, model_config, depth)
    if period is None or depth < 6 * period:
        return _trace_at_depth(config, layout, length, options, world, device, model_config)
    one, two, three = (
        _trace_at_depth(config, layout, length, options, world, device, with_depth(model_config, k * period))
        for k in (1, 2, 3)
    )
    fields = [f.name for f in dataclasses.fields(Estimate)]
    if any(
        abs(2 * getattr(two, f) - getattr(one, f) - getattr(three, f)) > 0.005 * getattr(three, f)
        for f in fields
    ):
        return _trace_at_depth(config, layout, length, options, world, device, model_config)
    scale = (depth - 3 * period) / period
    return Estimate(
        **{f: round(getattr(three, f) + scale * (getattr(three, f) - getattr(two, f))) for f in fields}
    )


def _repeating_period(config, model_config, depth: int) -> int | None:
    """Layers per repeating unit of the decoder, or None when its layers are not a repetition."""
    types = getattr(model_config.get_text_config(), "layer_types", None)
    period = 1
    if isinstance(types, list) and types:
        period = next(
            p for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types))
        )
    key = (repr(config.model), repr(config.finetuning))
    if key not in _PERIOD_CHECKED:
        model = build_skeleton(config.model, config.finetuning, config.training, model_config)
        _PERIOD_CHECKED[key] = _layer_signatures(model)
    shapes = _PERIOD_CHECKED[key]
    if len(shapes) != depth:
        return None
    if any(shape != shapes[i % period] for i, shape in enumerate(shapes)):
        return None  # e.g. dense first layers before MoE ones
    return period


_PERIOD_CHECKED: dict[tuple[str, str], list[tuple]] = {}


def _layer_signatures(model) -> list[tuple]:
    return [
        tuple((name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in layer.named_parameters())
        for layer in decoder_layers(model)
    ]


def _trace_at_depth(
    config, layout: Layout, length: int, options: Options, world: int, device: str, model_config
) -> Estimate:
    from ..models.memory import token_loss_head
    from ..models.memory_stack import apply_memory_stack
    from ..parallel.sharding import padded_length

    model_args = dataclasses.replace(
        config.model, disable_gradient_checkpointing=not options.checkpointing, enable_liger_kernel=False
    )
    memory_args = dataclasses.replace(
        config.memory,
        tiled_mlp=options.tiled_mlp,
        gradient_checkpointing_offload=options.offload and options.checkpointing,
        efficient_rms_norm=options.efficient_rms_norm,
        tiled_mlp_tile_tokens=options.tile_tokens,
    )
    model = build_skeleton(model_args, config.finetuning, config.training, model_config)
    model.train()
    with torch.device("meta"):
        head = apply_memory_stack(model, model_args, memory_args, training=True, preserve_rng_state=False)
    offload_hooks = _offload_hooks(model)
    half = next(p for p in model.parameters()).dtype in (torch.float16, torch.bfloat16)
    acc = torch.float32 if device == "cpu" or layout.ring > 1 or not half else next(model.parameters()).dtype
    wire_planned_attention(model, layout, acc)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, foreach=False)
    rows = config.training.per_device_train_batch_size * (
        2 if config.finetuning.stage in PAIRED_STAGES else 1
    )
    local = padded_length(length, layout.split_unit) // layout.size
    reduction = "none" if config.finetuning.stage in PAIRED_STAGES else "sum"

    # transformers' default optimizer is fused AdamW, which updates in place (no temporaries): the
    # measured step then only needs the gradients alive at its end, which the trace has.
    optim = config.training.optim
    fused = "fused" in str(getattr(optim, "value", optim))

    def step(measured: bool = False):
        ids = torch.empty((rows, local), dtype=torch.long, device="meta")
        positions = torch.empty((rows, local), dtype=torch.long, device="meta")
        # Autocast does not act on meta tensors: activations are traced in the weights' dtype (bf16
        # for a bf16 base under LoRA, as autocast gives; fp32 master weights trace fp32 matmul outputs).
        with token_loss_head(model, ids, head_options=head, reduction=reduction):
            loss = model(input_ids=ids, position_ids=positions, use_cache=False).logits.sum()
        loss.backward()
        if not (measured and fused):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    simulated = simulated_sequence_parallel(device) if layout.size > 1 else contextlib.nullcontext()
    with simulated:
        step()  # gradients and optimizer state, as after the first training step
    if offload_hooks is not None:
        offload_hooks.offloaded_bytes = 0
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    static = storage_bytes([*model.parameters(), *model.buffers(), *state])
    with simulated_sequence_parallel(device) if layout.size > 1 else contextlib.nullcontext():
        with LiveTensorBytes(baseline=static, record_peak=_DIAGNOSE) as live:
            step(measured=True)
    if _DIAGNOSE:
        _print_peak(live)
    trainable_bytes = sum(p.numel() * 4 for p in trainable)
    extra = 0
    host = offload_hooks.offloaded_bytes if offload_hooks is not None else 0
    if _sharded(config) and _offloads_shards(config):
        # FSDP2's CPUOffloadPolicy: the shards, their gradients and the optimizer state live in host
        # memory; the device holds one gathered layer and its unsharded gradients at a time.
        layer = _largest_layer_bytes(model)
        peak = live.peak - static + 2 * layer
        host += static // world + trainable_bytes // world
        static = layer
    elif _sharded(config):
        # weights, gradients and optimizer state are sharded; one layer's weights are gathered at a time
        layer = _largest_layer_bytes(model)
        sharded_static = static // world + layer
        peak = live.peak - static + sharded_static + trainable_bytes // world
        static = sharded_static
    else:
        if world > 1:
            extra = trainable_bytes  # DDP's flat gradient buckets (gradient_as_bucket_view off)
        peak = live.peak + extra
    frozen, frozen_host = _frozen_model_bytes(config, model, world)
    return Estimate(
        peak=peak + frozen,
        static=static + extra + frozen,
        host=host + frozen_host,
        trainable=sum(p.numel() for p in trainable),
        frozen=frozen,
    )


def frozen_models(config) -> int:
    """Whole frozen models a run holds beside the policy: the reference copy (or `ref_model`) when
    the stage has a reference and LoRA cannot give it, and PPO's full reward model."""
    from ..train.losses import REFERENCE_FREE_LOSSES

    finetuning = config.finetuning
    stage = finetuning.stage
    needs_reference = (
        (stage == "dpo" and finetuning.pref_loss not in REFERENCE_FREE_LOSSES)
        or stage in ("kto", "ppo")
        or (stage == "grpo" and finetuning.beta > 0)
    )
    count = int(needs_reference and (finetuning.finetuning_type != "lora" or bool(finetuning.ref_model)))
    if stage == "ppo" and finetuning.reward_model_type == "full" and finetuning.reward_model:
        count += 1
    return count


def _frozen_model_bytes(config, model, world: int) -> tuple[int, int]:
    """(device, host) bytes per rank of the frozen models: compute-dtype weights, sharded as the policy."""
    from ..models.loader import compute_dtype_for

    count = frozen_models(config)
    if not count:
        return 0, 0
    itemsize = torch.empty((), dtype=compute_dtype_for(config.training, config.finetuning)).element_size()
    adapters = ("lora_", "modules_to_save", "v_head")
    whole = sum(
        p.numel() * itemsize for name, p in model.named_parameters() if not any(a in name for a in adapters)
    )
    layer = itemsize * max((sum(p.numel() for p in m.parameters()) for m in decoder_layers(model)), default=0)
    if _sharded(config) and _offloads_shards(config):
        return count * layer, count * whole // world
    if _sharded(config):
        return count * (whole // world + layer), 0
    return count * whole, 0


_DIAGNOSE = False


def _print_peak(live) -> None:
    import collections

    by_op = collections.Counter()
    for op, shape, size in live.at_peak:
        by_op[(op, shape)] += size
    for (op, shape), size in by_op.most_common(25):
        print(f"{size / 2**20:9.1f} MiB  {op} {shape}")


def _offload_hooks(model):
    from ..models.checkpointing import HostOffload
    from ..models.wrappers import unwrap_model

    for module in unwrap_model(model).modules():
        function = module.__dict__.get("_gradient_checkpointing_func")
        for cell in getattr(function, "__closure__", None) or ():
            if isinstance(cell.cell_contents, HostOffload):
                return cell.cell_contents
    return None


def _largest_layer_bytes(model) -> int:
    return max((storage_bytes(m.parameters()) for m in decoder_layers(model)), default=0)


def longest_length(
    config,
    layout: Layout,
    options: Options,
    budget: int,
    *,
    world: int,
    device: str = "cuda",
    start: int = 8192,
    known: dict[int, Estimate] | None = None,
) -> tuple[int, Estimate | None]:
    """The longest sequence (a multiple of 1,024, to 2%) whose traced peak fits `budget` bytes.

    Memory is close to affine in the length once activations outgrow the loss head's fixed chunk:
    each trace aims at the budget on the line through the bracket (or, before there is one, through
    the two traced points nearest to it), and an aim within 2% of a traced point is moved 2% past
    it, so that the bracket closes in a few traces. `known` holds traces already made
    (length -> estimate) and receives the new ones.
    """
    points: dict[int, Estimate] = {} if known is None else known

    def traced(length: int) -> int:
        if length not in points:
            points[length] = trace(config, layout, length, options, world=world, device=device)
        return length

    def rounded(length: float) -> int:
        return max(1024, int(length) // 1024 * 1024)

    traced(rounded(start))
    traced(rounded(2 * start))
    for _ in range(16):
        fits = sorted(length for length, e in points.items() if e.peak <= budget)
        over = sorted(length for length, e in points.items() if e.peak > budget)
        good, bad = (fits[-1] if fits else 0), (over[0] if over else None)
        if bad is not None and bad - good <= _tolerance(bad):
            break
        if bad is None and good >= 1 << 27:
            break
        if good and bad is not None:
            a, b = good, bad
        else:
            a, b = sorted(sorted(points, key=lambda x: abs(points[x].peak - budget))[:2])
        slope = (points[b].peak - points[a].peak) / (b - a)
        aim = b + (budget - points[b].peak) / slope if slope > 0 else 2 * max(points)
        if bad is None:
            aim = min(max(aim, good + _tolerance(good)), 1 << 27)
        elif good == 0:
            aim = min(aim, bad / 2) if bad > 1024 else 0
            if aim < 1024:
                break  # not even the shortest length fits
        else:
            aim = min(max(aim, good + _tolerance(good)), bad - _tolerance(bad))
        candidate = rounded(aim)
        if candidate in points:
            candidate = rounded((good + bad) / 2) if bad is not None else rounded(2 * good)
            if candidate in points:
                break
        traced(candidate)
    fits = sorted(length for length, e in points.items() if e.peak <= budget)
    return (fits[-1], points[fits[-1]]) if fits else (0, None)


def _tolerance(length: int) -> int:
    return max(1024, length // 50)


def gib(value: int | float) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value / 2**30:.2f}"
    )

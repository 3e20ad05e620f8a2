"""FSDP2 (`torch.distributed.fsdp.fully_shard`) driven by this project, on CPU (gloo) and GPU alike.

The whole world is one FSDP mesh: SP ranks hold different tokens of the same sequences, so, as with
ZeRO-3, every rank keeps 1/world of each parameter, gradient and optimizer state, and the gathered
weights are the same on every rank of an SP group. Each decoder layer (the model's
`_no_split_modules`, or `transformer_layer_cls_to_wrap`) is a unit of its own, so one layer's
weights are gathered at a time; the root unit holds the embeddings, the final norm and the head.

Precision (`precision_policy`): `bf16: true` keeps fp32 master weights, gradients and optimizer
state and computes in bf16, reducing gradients in fp32 (`MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)`); `pure_bf16` keeps everything in bf16; fp32 runs keep fp32. Gradients are
reduce-scattered after every micro-batch, so they stay sharded across gradient accumulation (FSDP's
`no_sync` would keep a whole unsharded copy until the last micro-batch).

Checkpoints (`save_sharded` / `load_sharded`) go through `torch.distributed.checkpoint`: every rank
writes its shards, and a load reshards to the world it runs in (4 ranks -> 2).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import nn

from ..config.fsdp import FsdpSettings
from ..models.wrappers import unwrap_model

logger = logging.getLogger(__name__)

# The folder of a checkpoint's sharded model and optimizer state (torch.distributed.checkpoint).
SHARDED_FOLDER = "fsdp2_state"


def precision_policy(training_args, pure_bf16: bool):
    """The MixedPrecisionPolicy for the run's precision keys (see the module doc)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if getattr(training_args, "bf16", False) and not pure_bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def layer_units(model: nn.Module, settings: FsdpSettings) -> list[nn.Module]:
    """The modules sharded as units of their own (decoder layers), in model order."""
    if not settings.wrap_layers:
        return []
    names = set(settings.layer_classes or getattr(unwrap_model(model), "_no_split_modules", None) or ())
    units = [module for module in model.modules() if type(module).__name__ in names]
    if settings.layer_classes and not units:
        raise ValueError(
            f"fsdp_config.transformer_layer_cls_to_wrap={list(settings.layer_classes)} names no module of "
            f"{type(unwrap_model(model)).__name__}"
        )
    return units


def shard_model(
    model: nn.Module, settings: FsdpSettings, training_args, pure_bf16: bool = False
) -> nn.Module:
    """Shard `model` in place over the whole world with FSDP2; returns it (now an FSDPModule)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    device = training_args.device
    if not dist.is_initialized():
        # One process (e.g. to offload a model that does not fit one GPU): a group of one.
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if settings.cpu_offload:
        offload = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    else:
        offload = OffloadPolicy()
    options = {
        "mesh": mesh,
        "reshard_after_forward": settings.reshard_after_forward,
        "mp_policy": precision_policy(training_args, pure_bf16),
        "offload_policy": offload,
    }
    units = layer_units(model, settings)
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options)
    logger.info(
        "FSDP2: %d layer units + the root over %d ranks (reshard after forward: %s, offload: %s)",
        len(units),
        mesh.size(),
        settings.reshard_after_forward,
        settings.cpu_offload,
    )
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


class ShardedModel(nn.Module):
    """The Trainer's handle on an FSDP2 model: accelerate prepares what is not the Trainer's own
    model object without wrapping it in DDP (which refuses DTensor parameters, and would reduce the
    gradients FSDP already reduces). `module` is the model, as for DDP."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict in rank 0's host memory, the rank that saves (collective: every
    rank calls it; the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(folder: str, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Every rank writes its shards of the model (and optimizer) state under `folder` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer if optimizer is not None else [])
    state = {"model": model_state}
    if optimizer is not None:
        state["optimizer"] = optimizer_state
    dcp.save(state, checkpoint_id=os.path.join(folder, SHARDED_FOLDER))


def has_sharded_state(checkpoint: str) -> bool:
    return os.path.isdir(os.path.join(checkpoint, SHARDED_FOLDER))


def load_sharded_model(checkpoint: str, model: nn.Module) -> None:
    """The model weights of a sharded checkpoint, resharded to this world (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=os.path.join(checkpoint, SHARDED_FOLDER))
    set_model_state_dict(model, state["model"])


def load_sharded_optimizer(checkpoint: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer state of a sharded checkpoint, resharded to this world (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=os.path.join(checkpoint, SHARDED_FOLDER))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])

"""Recurrent token mixers (delta rules, Mamba scans, short convolutions) made exact under SP and
across packed documents; one file a mechanism.

`install_recurrent_mixers(model, layout)` replaces the forward of every mixer it knows with one that
reads the forward's `MixerContext`, and adds a pre-hook to the model that builds that context from
the position ids once per forward and passes it down as a keyword argument (transformers hands
keyword arguments of the model call to every decoder layer and from there to the mixer). Without a
context (generation with a cache, a forward that is neither sharded nor packed) a mixer runs its
own forward unchanged.
"""

from __future__ import annotations

import types

from torch import nn

from ...parallel.mesh import SequenceParallelLayout
from ..wrappers import unwrap_model
from . import gated_deltanet, kimi_delta, mamba1, mamba2, short_conv
from .documents import CONTEXT_KEY, MixerContext, build_context

# Mechanism modules by the transformers class names of the layers they drive.
MECHANISMS = {
    name: mechanism
    for mechanism in (gated_deltanet, kimi_delta, mamba1, mamba2, short_conv)
    for name in mechanism.CLASS_NAMES
}


def recurrent_mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every mixer layer of `model` that a mechanism here drives."""
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ in MECHANISMS]


def split_problems(model: nn.Module, sp_size: int) -> list[str]:
    """Why the model's mixers cannot split over `sp_size` ranks, one line per kind of layer."""
    problems = {}
    for _, module in recurrent_mixers(model):
        problem = MECHANISMS[type(module).__name__].split_problem(module, sp_size)
        if problem:
            problems.setdefault(type(module).__name__, problem)
    return [f"{name}: {problem}" for name, problem in problems.items()]


def _mixer_forward(module: nn.Module, *args, **kwargs):
    # The keyword argument is the context of this very forward, also when checkpointing replays it.
    # Families whose layers do not hand keyword arguments to their mixer (Jamba) get the model
    # call's context from the model's pre-hook instead, which holds in training, where each forward's
    # backward (and its recomputation) runs before the next training forward.
    context: MixerContext | None = kwargs.pop(CONTEXT_KEY, None) or module.__dict__.get("_ulysses_context")
    cache = kwargs.get("cache", kwargs.get("cache_params"))
    if context is None or cache is not None or (not context.sharded and context.one_document_per_row):
        return module._ulysses_own_forward(*args, **kwargs)
    hidden = args[0] if args else kwargs["hidden_states"]
    return MECHANISMS[type(module).__name__].forward(module, hidden, context)


def _position_ids(module: nn.Module, args: tuple, kwargs: dict):
    given = kwargs.get("position_ids")
    if given is None:
        import inspect

        names = list(inspect.signature(module.forward).parameters)
        if "position_ids" in names and names.index("position_ids") < len(args):
            given = args[names.index("position_ids")]
    return given


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for key in ("input_ids", "inputs_embeds"):
        if kwargs.get(key) is not None:
            return kwargs[key].shape[0]
    return args[0].shape[0] if args and hasattr(args[0], "shape") else None


def _context_hook(layout: SequenceParallelLayout | None, sequence_parallel_name: str):
    def attach(module: nn.Module, args: tuple, kwargs: dict):
        if (
            kwargs.get("use_cache")
            or kwargs.get("past_key_values") is not None
            or kwargs.get("cache") is not None
        ):
            for mixer in module.__dict__.get("_ulysses_mixers", ()):
                mixer.__dict__["_ulysses_context"] = None
            return None  # generation: the mixers keep their own (cached) forward
        sharded = layout is not None and module.config._attn_implementation == sequence_parallel_name
        position_ids = _position_ids(module, args, kwargs)
        batch = _batch_size(args, kwargs)
        context = None
        if position_ids is not None and batch is not None:  # else one unsharded document per row
            context = build_context(position_ids, layout if sharded else None, batch)
            kwargs[CONTEXT_KEY] = context
        for mixer in module.__dict__.get("_ulysses_mixers", ()):
            mixer.__dict__["_ulysses_context"] = context
        return args, kwargs

    return attach


def install_recurrent_mixers(
    model: nn.Module, layout: SequenceParallelLayout | None, sequence_parallel_name: str
) -> int:
    """Drive every known mixer of `model` (SP when `layout` is set and the model runs
    `sequence_parallel_name` attention; document restarts always), and with a layout pass every
    forward's context down (SP attention reads the position ids from it where a family does not pass
    them to its layers); returns how many mixers."""
    hf_model = unwrap_model(model)
    mixers = recurrent_mixers(hf_model)
    # Kept on the model (a deep copy, e.g. DPO's reference, gets its own mixers in the list).
    hf_model.__dict__["_ulysses_mixers"] = [module for _, module in mixers]
    for _, module in mixers:
        if not hasattr(module, "_ulysses_own_forward"):
            module._ulysses_own_forward = module.forward
            module.forward = types.MethodType(_mixer_forward, module)
    hook = getattr(hf_model, "_ulysses_mixer_hook", None)
    if hook is not None:
        hook.remove()
        hf_model._ulysses_mixer_hook = None
    if mixers or layout is not None:
        hf_model._ulysses_mixer_hook = hf_model.register_forward_pre_hook(
            _context_hook(layout, sequence_parallel_name), with_kwargs=True
        )
    return len(mixers)


__all__ = ["MixerContext", "install_recurrent_mixers", "recurrent_mixers", "split_problems"]

"""`ulysses-pro train | plan | preview | export | convert | chat | api | webui | make-tiny-model | env`, with torchrun self-launch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

USAGE = """usage: ulysses-pro <command> [arguments]

commands:
  train CONFIG.yaml [key=value | --key value ...]   train a stage (LLaMA-Factory config keys)
  plan CONFIG.yaml [--gpu-memory 80GiB] [--nproc 8]  per-rank peak memory and longest length (no weights)
  export CONFIG.yaml [key=value ...]                merge LoRA into the base model, write a HF folder
  convert CHECKPOINT OUTPUT [--dtype bf16]           a sharded (FSDP2 / ZeRO) checkpoint as a HF folder
  chat CONFIG.yaml [key=value ...] [--prompt TEXT]  talk to the model (streamed), or answer once
  api CONFIG.yaml [key=value ...] [--port 8000]     serve it over an OpenAI-compatible HTTP API
  webui [--host 127.0.0.1] [--port 7860] [--runs-dir DIR]
                                                    a web board: configure, start, watch, chat, export
  preview CONFIG.yaml [key=value ...] [--rows N] [--jsonl OUT]
                                                    the first training rows as the model sees them
  make-tiny-model --arch ARCH --out DIR [options]    build a tiny random model locally
  env                                                versions and optional accelerators

Multi-process: NPROC_PER_NODE=2 ulysses-pro train cfg.yaml  (relaunches under torchrun), or
torchrun --nproc_per_node 2 -m ulysses_pro train cfg.yaml, or under SLURM
srun ulysses-pro train cfg.yaml  (each task is a rank; no torchrun)
"""


def visible_device_count() -> int:
    """CUDA devices this process sees (0 on a CPU machine)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _needs_torchrun() -> int:
    """Number of processes to relaunch with, or 0 when this process should train itself.

    LLaMA-Factory's rule: with more than one visible GPU (or FORCE_TORCHRUN), relaunch under
    torchrun with NPROC_PER_NODE workers, by default one per visible GPU.
    """
    if "LOCAL_RANK" in os.environ or "RANK" in os.environ:
        return 0
    force = os.environ.get("FORCE_TORCHRUN", "").lower() in ("1", "true", "y", "yes")
    configured = os.environ.get("NPROC_PER_NODE")
    if configured:
        nproc = int(configured)
        return nproc if nproc > 1 or force else 0
    devices = visible_device_count()
    if devices > 1 or force:
        return max(1, devices)
    return 0


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[ulysses-pro] %(message)s", stream=sys.stdout, force=True)
    # transformers' own info chatter drowns the run log; warnings still show.
    for noisy in ("transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def train(arguments: list[str]) -> int:
    """Load and validate the config, then run the stage."""
    if any(a in ("-h", "--help") for a in arguments):
        from .config import known_keys

        print("usage: ulysses-pro train CONFIG.yaml [key=value | --key value ...]\n\nvalid keys:")
        print("  " + "\n  ".join(known_keys()))
        return 0
    from .process_env import describe_slurm, expandable_cuda_segments, use_slurm_tasks

    try:
        slurm = use_slurm_tasks()  # srun tasks become ranks: no relaunch below
    except ValueError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    nproc = _needs_torchrun()
    _setup_logging()
    if slurm and slurm["RANK"] == "0":
        logging.getLogger("ulysses_pro").info(describe_slurm(slurm))
    expandable_cuda_segments()
    from .config import ConfigError, load_config
    from .data.errors import DataError
    from .launch import INPUT_ERROR_EXIT, relaunch, report_failure
    from .pro.torch_compat import CheckpointError

    try:
        config = load_config(None, arguments)
        if nproc:
            from .train.preflight import preflight

            # Once, here, before any worker starts (each worker checks again before it loads).
            preflight(config, nproc * int(os.environ.get("NNODES", "1") or 1))
    except (ConfigError, DataError) as err:
        report_failure(f"config error: {err}")
        return INPUT_ERROR_EXIT
    if nproc:
        return relaunch(nproc, arguments)
    from .train.metrics_log import MetricsLog
    from .train.stages import run_stage

    try:
        # trainer_log.jsonl: what `webui` (and anyone tailing the run) reads while it trains
        run_stage(config, callbacks=[MetricsLog()])
    except (ConfigError, DataError, CheckpointError) as err:
        report_failure(f"{type(err).__name__}: {err}")
        return INPUT_ERROR_EXIT
    except Exception as err:
        # The traceback follows as usual; the launcher's last line names this rank and the error.
        first_line = (str(err).strip().splitlines() or [""])[0]
        report_failure(f"rank {os.environ.get('RANK', '0')}: {type(err).__name__}: {first_line}", echo=False)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # A peer may be dead or hung: tearing the process group down (here or at interpreter
            # exit) could wait for it forever. Leave now; the launcher stops the others.
            traceback.print_exc()
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(1)
        raise
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def make_tiny_model_command(arguments: list[str]) -> int:
    """Write a tiny random model plus the built-in tokenizer to a folder."""
    from .models.multimodal.tiny import TINY_VISION_ARCHES, make_tiny_vision_model
    from .models.tiny import TINY_ARCHES, make_tiny_model

    parser = argparse.ArgumentParser(prog="ulysses-pro make-tiny-model")
    parser.add_argument("--arch", required=True, choices=TINY_ARCHES + TINY_VISION_ARCHES)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--num-heads", type=int)
    parser.add_argument("--num-kv-heads", type=int, help="fewer than --num-heads gives GQA")
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--intermediate-size", type=int)
    options = parser.parse_args(arguments)
    overrides = {
        key: value
        for key, value in vars(options).items()
        if key not in ("arch", "out", "seed") and value is not None
    }
    if options.arch in TINY_VISION_ARCHES:
        # A vision-language model with its processor configs (sizes: the language model's)
        sizes = {k: v for k, v in overrides.items() if k in ("hidden_size", "num_layers")}
        path = make_tiny_vision_model(options.arch, options.out, seed=options.seed, **sizes)
    else:
        path = make_tiny_model(options.arch, options.out, seed=options.seed, **overrides)
    print(f"tiny {options.arch} model written to {path}")
    return 0


def env_command() -> int:
    """Print versions and which optional accelerators are importable."""
    import importlib.metadata as metadata
    import platform

    import torch

    print(f"python        {platform.python_version()}")
    for package in (
        "ulysses-pro",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "deepspeed",
        "flash-attn",
        "liger-kernel",
    ):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"{package:<13} {version}")
    print(f"cuda          {torch.cuda.is_available()} ({torch.cuda.device_count()} devices)")
    return 0


def _input_command(name: str, arguments: list[str]) -> int:
    """A command that reads a config and data: bad input is one line, exit code 2."""
    import importlib

    from .config import ConfigError
    from .data.errors import DataError
    from .launch import INPUT_ERROR_EXIT, report_failure

    _setup_logging()
    module = importlib.import_module(f".commands.{name}", __package__)
    try:
        return module.run(arguments)
    except (ConfigError, DataError) as err:
        report_failure(f"{type(err).__name__}: {err}")
        return INPUT_ERROR_EXIT


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train(rest)
    if command == "plan":
        _setup_logging()
        logging.getLogger("ulysses_pro").setLevel(logging.WARNING)  # the trace's own logs are noise here
        from .planner.report import run

        return run(rest)
    if command in ("preview", "export", "chat", "convert", "api"):
        return _input_command(command, rest)
    if command == "webui":
        _setup_logging()
        from .commands.webui import run as webui

        return webui(rest)
    if command == "make-tiny-model":
        return make_tiny_model_command(rest)
    if command == "env":
        return env_command()
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2

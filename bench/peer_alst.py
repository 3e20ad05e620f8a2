"""Ulysses Pro against DeepSpeed's ALST (Arctic Long Sequence Training), side by side, SP=2 on CPU.

    python bench/peer_alst.py [--lengths 8192 16384 32768] [--cap-mib 3072] [--sides ours alst]

The model (the issue's): a random Llama, hidden 256, 4 layers, 8 query / 2 KV heads, intermediate
1024, vocabulary 32,000, untied embeddings; full fine-tuning in fp32 with AdamW, batch 1, one
sequence of L tokens split over 2 CPU processes (gloo). Both sides use gradient checkpointing.

- ALST (deepspeed.runtime.sequence_parallel.ulysses_sp): `UlyssesSPAttentionHF` registered over
  SDPA, `UlyssesSPDataLoaderAdapter` sharding the batch, `TiledMLP` patched into the MLP as its
  docstring shows (ceil(seqlen / hidden) shards), `TiledFusedLogitsLoss`, the loss averaged over SP
  ranks by good tokens as ALST does, on a DeepSpeed engine (ZeRO stage 0: weights, gradients and
  AdamW replicated, as on our side).
- Ulysses Pro: the real path (config -> data -> model -> trainer) of `stage: pt` on one L-token
  document with `sequence_parallel_size: 2`, `tiled_mlp: true`; checkpointing is our default.

Per-rank peak memory is the resident-set high-water mark of the second optimizer step (worst
rank; glibc mmaps large blocks so freed tensors leave the RSS), reset at the step's start: weights,
gradients, optimizer state and activations all count. The slope is taken between the two longest
lengths; the longest length under the cap is extrapolated from it and then measured once. Prints
tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import pin_malloc, reset_rss_peak, rss_peak_mib  # noqa: E402

from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)

MODEL = {
    "hidden_size": 256,
    "num_layers": 4,
    "num_heads": 8,
    "num_kv_heads": 2,
    "intermediate_size": 1024,
    "vocab_size": 32000,
}  # untied: the tiny Llama's default, as in Llama itself
SP = 2


def _tiny_spec(length: int) -> str:
    sizes = {**MODEL, "max_position_embeddings": 2 * length}
    return "tiny:llama?" + "&".join(f"{k}={v}" for k, v in sizes.items())


def _token_ids(length: int, seed: int = 0) -> list[int]:
    import random

    generator = random.Random(seed)
    return [generator.randrange(3, 1000) for _ in range(length + 1)]


# ---------------------------------------------------------------------------------------------
# Ulysses Pro


def _text_of_exactly(length: int) -> str:
    """A document the pt pipeline turns into exactly `length` tokens (one packed row, no window)."""
    from ulysses_pro.models.tokenizer import load_builtin_tokenizer

    tokenizer = load_builtin_tokenizer()

    def tokens(words: int) -> int:
        return len(tokenizer.encode(" ".join(["a"] * words), add_special_tokens=True)) + 1  # + eos

    overhead = tokens(10) - 10
    return " ".join(["a"] * (length - overhead))


def _ours(rank, world, length: int, options: dict) -> dict:
    from transformers import TrainerCallback

    from ulysses_pro.config import load_config
    from ulysses_pro.train.stages import run_stage

    class SecondStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                reset_rss_peak()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                self.peak_mib, self.seconds = rss_peak_mib(), time.perf_counter() - self.started

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        (data / "long.json").write_text(json.dumps([{"text": _text_of_exactly(length)}]))
        (data / "dataset_info.json").write_text(
            json.dumps({"long": {"file_name": "long.json", "columns": {"prompt": "text"}}})
        )
        keys = {
            "model_name_or_path": _tiny_spec(length),
            "stage": "pt",
            "finetuning_type": "full",
            "dataset": "long",
            "dataset_dir": str(data),
            "cutoff_len": length,
            "packing": True,
            "do_train": True,
            "max_steps": 2,
            "per_device_train_batch_size": 1,
            "learning_rate": 1e-5,
            "sequence_parallel_size": SP,
            "sequence_parallel_mode": "ulysses",
            "tiled_mlp": True,
            "tiled_mlp_tile_tokens": options["tile_tokens"],
            "output_dir": str(data / "out"),
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "logging_steps": 1,
            "overwrite_output_dir": True,
        }
        probe = SecondStep()
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            trainer = run_stage(load_config(keys), callbacks=[probe])
        loss = trainer.state.log_history[0]["loss"]
    return {"peak_mib": probe.peak_mib, "seconds": probe.seconds, "loss": loss}


# ---------------------------------------------------------------------------------------------
# DeepSpeed ALST


def _alst(rank, world, length: int, options: dict) -> dict:
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.runtime.sequence_parallel.ulysses_sp import (
        TiledFusedLogitsLoss,
        TiledMLP,
        UlyssesSPAttentionHF,
        UlyssesSPDataLoaderAdapter,
    )
    from torch.utils.data import DataLoader
    from transformers.models.llama import modeling_llama

    from ulysses_pro.models.tiny import build_tiny_model

    def tiled_mlp_forward(self, x):
        shards = math.ceil(x.shape[1] / x.shape[2])  # ALST's documented choice: seqlen / hidden

        def mlp_forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

        params = [self.down_proj.weight, self.gate_proj.weight, self.up_proj.weight]
        return TiledMLP.apply(mlp_forward, self, x, shards, params)

    deepspeed.init_distributed(dist_backend="gloo")  # joins the process group the launcher started
    modeling_llama.LlamaMLP.forward = tiled_mlp_forward
    model = build_tiny_model("llama", seed=0, max_position_embeddings=2 * length, **MODEL)
    assert not model.config.tie_word_embeddings
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model,
        core_attn_implementation="sdpa",
        sequence_parallel_size=SP,
        micro_batch_size=1,
        seq_length=length,
        seq_length_is_variable=True,
    )
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": options["zero_stage"]},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True}},
        "sequence_parallel_size": SP,
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config, mpu=mpu
    )
    ids = torch.tensor(_token_ids(length))
    sample = {"input_ids": ids[:-1], "labels": ids[:-1], "position_ids": torch.arange(length)}
    loader = DataLoader([sample] * SP * 2, batch_size=1)
    sp_group = mpu.get_sequence_parallel_group()
    loader = UlyssesSPDataLoaderAdapter(
        loader, sp_rank=dist.get_rank(sp_group), sp_group=sp_group, sp_world_size=SP, device=engine.device
    )
    unwrapped = engine.module

    def loss_fn(self, x, y):
        logits = self.lm_head(x).float()
        return torch.nn.functional.cross_entropy(
            logits.view(-1, logits.shape[-1]), y.view(-1), reduction="sum"
        )

    result = {}
    for step, batch in enumerate(loader):
        if step == 2:
            break
        if step == 1:
            reset_rss_peak()
            started = time.perf_counter()
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        shift_labels = batch.pop("shift_labels")
        hidden = unwrapped.model(**batch).last_hidden_state
        shards = max(1, math.ceil(hidden.shape[1] * MODEL["vocab_size"] / options["logits_budget"]))
        loss_sum = TiledFusedLogitsLoss.apply(
            loss_fn, unwrapped, hidden, shift_labels, None, shards, [unwrapped.lm_head.weight], "sum"
        )
        good = (shift_labels != -100).sum()
        losses = torch.distributed.nn.functional.all_gather(loss_sum, group=sp_group)
        counts = torch.distributed.nn.functional.all_gather(good, group=sp_group)
        loss = sum(losses) / sum(counts)
        engine.backward(loss)
        engine.step()
        if step == 0:
            result["loss"] = float(loss)
    result.update(peak_mib=rss_peak_mib(), seconds=time.perf_counter() - started)
    return result


SIDES = {"ours": _ours, "alst": _alst}


def measure(side: str, length: int, options: dict) -> dict:
    results = run_ranks(SIDES[side], SP, length, options, timeout=3600)
    return {
        "peak_mib": max(r["peak_mib"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "loss": results[0]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--cap-mib", type=float, default=3072.0)
    parser.add_argument("--sides", nargs="+", default=["ours", "alst"], choices=list(SIDES))
    parser.add_argument("--tile-tokens", type=int, default=1024, help="our tiled_mlp_tile_tokens")
    parser.add_argument("--zero-stage", type=int, default=0, help="ALST's DeepSpeed ZeRO stage")
    parser.add_argument("--no-check", action="store_true", help="skip the check of the extrapolation")
    parser.add_argument(
        "--check-length",
        type=int,
        help="measure here to check the line (default: at the extrapolated longest length; on 2 CPU "
        "cores a step at hundreds of thousands of tokens takes hours)",
    )
    args = parser.parse_args()
    pin_malloc()
    os.environ.setdefault(
        "TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "ulysses-pro-torch-extensions")
    )
    options = {"tile_tokens": args.tile_tokens, "zero_stage": args.zero_stage, "logits_budget": 1 << 25}
    lengths = sorted(args.lengths)
    print(
        f"# SP={SP} on 2 CPU processes; Llama h256 x 4 layers, 8/2 heads, vocab 32k, fp32 AdamW, checkpointing"
    )
    print("| side | L | peak MiB/rank | step s | first loss |")
    print("|---|---|---|---|---|")
    summary = {}
    for side in args.sides:
        rows = {}
        for length in lengths:
            rows[length] = measure(side, length, options)
            r = rows[length]
            print(
                f"| {side} | {length} | {r['peak_mib']:.0f} | {r['seconds']:.2f} | {r['loss']:.4f} |",
                flush=True,
            )
        top, below = lengths[-1], lengths[-2]
        slope = (rows[top]["peak_mib"] - rows[below]["peak_mib"]) * 1024 / (top - below)  # KiB per token
        longest = top + (args.cap_mib - rows[top]["peak_mib"]) * 1024 / slope if slope > 0 else math.inf
        longest = int(longest // 1024 * 1024)
        at = args.check_length or longest
        check = None if args.no_check or not math.isfinite(at) else measure(side, at, options)
        predicted = rows[top]["peak_mib"] + slope * (at - top) / 1024
        if check is not None:  # printed at once: a check takes the longest of all rows
            print(
                f"| {side} | {at} (check: line predicts {predicted:.0f}) | {check['peak_mib']:.0f} | "
                f"{check['seconds']:.2f} | {check['loss']:.4f} |",
                flush=True,
            )
        summary[side] = (slope, longest, check, rows[top]["seconds"], at, predicted)
    print(
        "\n| side | slope KiB/token | longest L under the cap (extrapolated) | check: L, predicted / measured MiB "
        "| step s at the top L |"
    )
    print("|---|---|---|---|---|")
    for side, (slope, longest, check, seconds, at, predicted) in summary.items():
        measured = f"{at}: {predicted:.0f} / {check['peak_mib']:.0f}" if check else "-"
        print(f"| {side} | {slope:.1f} | {longest} | {measured} | {seconds:.2f} |")
    if {"ours", "alst"} <= summary.keys():
        ours, alst = summary["ours"], summary["alst"]
        print(
            f"\nours / ALST: slope {ours[0] / alst[0]:.2f}, longest length {ours[1] / alst[1]:.2f}, "
            f"step time {ours[3] / alst[3]:.2f}"
        )


if __name__ == "__main__":
    main()

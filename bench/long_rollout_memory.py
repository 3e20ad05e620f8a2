"""How long a rollout can get: the KV cache one rank holds with the batched engine (every row's
whole sequence on the rank that decodes) against `rollout_engine: sequence_parallel` (the prompt
once, split over the SP group, decoded tokens round-robin).

    python bench/long_rollout_memory.py [--prompt 512] [--new 128] [--generations 4]
                                        [--hidden 256] [--layers 4] [--sp 2 4]

1. Measured on CPU (gloo): a tiny Llama (h`--hidden` x `--layers`, 4 heads, 2 KV heads, fp32)
   decodes `--generations` completions of one `--prompt`-token prompt, `--new` tokens each, with the
   sequence-parallel engine at each `--sp`; each rank reports the bytes its cache held (the engine's
   own count of its tensors) and the decoding time. The batched engine's cache is its formula,
   rows x (prompt + new) x per-token bytes (transformers' DynamicCache keeps each row's prompt).
2. Extrapolated with the same formulas to a Llama-3-8B shape (32 layers, 8 KV heads of 128, bf16:
   128 KiB per token) under a cache budget per rank: the longest completion of 8 generations of a
   4,096-token prompt at SP 1/2/4/8.
CPU timings include gloo's all-reduces (three per layer and step); prints tables, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)


def _decode(rank, world_size, options):
    from ulysses_pro.models.attention import apply_sequence_parallel
    from ulysses_pro.models.tiny import build_tiny_model
    from ulysses_pro.models.tokenizer import load_builtin_tokenizer
    from ulysses_pro.parallel import init_sequence_parallel
    from ulysses_pro.train.rl.engines import RolloutRequest, SamplingSettings, make_engine

    tokenizer = load_builtin_tokenizer()
    model = build_tiny_model(
        "llama",
        tokenizer,
        hidden_size=options["hidden"],
        num_layers=options["layers"],
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=4 * (options["prompt"] + options["new"]),
    )
    prompt = torch.randint(5, 500, (options["prompt"],), generator=torch.Generator().manual_seed(0)).tolist()
    settings = SamplingSettings(do_sample=True, max_new_tokens=options["new"])
    # no stop token: every row decodes its whole budget
    request = RolloutRequest([prompt], options["generations"], [options["new"]], seed=1)
    layout = init_sequence_parallel(world_size, "ulysses", num_heads=4, num_kv_heads=2)
    apply_sequence_parallel(model, layout)
    engine = make_engine("sequence_parallel", tokenizer, settings, [-1], None, layout=layout)
    start = time.perf_counter()
    engine.generate(model, request)
    return engine.last_cache_bytes, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sp", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--budget-gib", type=float, default=60.0, help="KV cache budget per rank, 8B extrapolation")
    args = parser.parse_args()
    options = vars(args)
    head_dim = args.hidden // 4
    per_token = 2 * args.layers * 2 * head_dim * 4  # keys and values, layers, KV heads, fp32
    rows = args.generations
    batched = rows * (args.prompt + args.new) * per_token
    print(
        f"# tiny Llama h{args.hidden} x {args.layers} layers (2 KV heads of {head_dim}, fp32: {per_token} B per token); "
        f"{rows} completions of {args.new} tokens after a {args.prompt}-token prompt"
    )
    print("\n| engine | SP | cache per rank (MiB, measured) | formula (MiB) | decode seconds | new tokens/s |")
    print("|---|---|---|---|---|---|")
    print(f"| batched | 1 | - | {batched / 2**20:.2f} | - | - |")
    for sp in args.sp:
        results = run_ranks(_decode, sp, options)
        measured = max(bytes_ for bytes_, _ in results)
        seconds = max(s for _, s in results)
        # the prompt's shard (padded to the split unit) and ceil(new / sp) decoded slots per row
        shard = -(-(args.prompt - 1) // sp)
        formula = (shard + rows * -(-args.new // sp)) * per_token
        print(
            f"| sequence_parallel | {sp} | {measured / 2**20:.2f} | {formula / 2**20:.2f} | {seconds:.1f} | "
            f"{rows * args.new / seconds:.0f} |"
        )
    kib = 2 * 32 * 8 * 128 * 2  # Llama-3-8B: bytes per token, bf16
    budget = args.budget_gib * 2**30
    prompt, generations = 4096, 8
    print(
        f"\n# Llama-3-8B shape ({kib // 1024} KiB of KV per token, bf16), {generations} completions of a "
        f"{prompt}-token prompt, {args.budget_gib:g} GiB of cache per rank: the longest completion"
    )
    print("\n| engine | SP | longest completion (tokens) |")
    print("|---|---|---|")
    print(f"| batched | any (one rank decodes) | {int(budget // kib // generations - prompt):,} |")
    for sp in (1, 2, 4, 8):
        longest = int((budget * sp / kib - prompt) // generations)
        print(f"| sequence_parallel | {sp} | {longest:,} |")


if __name__ == "__main__":
    main()

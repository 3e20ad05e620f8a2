"""The longest prompt + response PPO and GRPO train at, against SFT's, under one per-rank memory cap.

    python bench/rl_vs_sft_length.py [--cap-mib 1200] [--sp 1 2] [--hidden 256] [--layers 4]

Each measurement is a fresh set of processes (1 or `--sp` ranks, gloo) running the real path
(config -> prompts -> model -> trainer) for two optimizer steps with LoRA, batch 1:
- sft: one conversation of exactly L tokens;
- ppo: one prompt of about L/2 tokens and a completion that brings the row to L, with its
  experience pass (policy log-probs and values, the reference with adapters off, a LoRA reward
  model on the same base) and the update, ppo_epochs 1 so every step has both;
- grpo: the same prompt with `num_generations: 2` completions of that length (two rows of L).
Sampling is replaced by a fixed completion of the wanted length, so what is measured is the
SP-split experience and update; rollouts run without SP (plain attention, one rank, KV cache) and
are not part of the number. Memory is each rank's resident-set high-water mark during the second
step (see dpo_vs_sft_length.py); the largest over the ranks counts. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.launcher import run_ranks  # noqa: E402  (the project's one multi-rank launcher)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_vs_sft_length import SEARCH_KEYS, add_search_arguments, longest_under_cap  # noqa: E402
from memory_probe import second_step_peak  # noqa: E402

VARIANTS = ("sft", "ppo", "grpo")
REWARD = "def varied(prompts, completions, **columns):\n    return [float(len(c) % 3) for c in completions]\n"


def _model_spec(options: dict, length: int) -> str:
    return (
        f"tiny:llama?hidden_size={options['hidden']}&num_layers={options['layers']}"
        f"&max_position_embeddings={2 * length}"
    )


def _prompt_of(tokenizer, tokens: int) -> str:
    """Words whose encoding is at most `tokens` ids (the template adds a few more)."""
    words = [str(i % 997) for i in range(tokens)]
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) > tokens:
        words = words[: int(len(words) * 0.9)]
    return " ".join(words)


def _write_reward_model(keys: dict, folder: Path) -> None:
    """A LoRA reward model (value head included) on the policy's own seeded base."""
    from ulysses_pro.config import load_config
    from ulysses_pro.models.loader import load_model, load_tokenizer
    from ulysses_pro.models.value_head import attach_value_head, save_value_head

    config = load_config({**keys, "stage": "rm", "dataset": "sft", "output_dir": str(folder)})
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, config.finetuning, tokenizer, config.training)
    attach_value_head(model, seed=1)
    model.save_pretrained(folder)
    save_value_head(model, folder)


def _measure(rank, world, variant: str, length: int, options: dict) -> dict:
    from ulysses_pro.config import load_config
    from ulysses_pro.config.args import ModelArguments
    from ulysses_pro.models.loader import load_tokenizer
    from ulysses_pro.train.rl import rollout
    from ulysses_pro.train.stages import run_stage

    def fixed_completions(self, model, prompts, num_generations, step):
        # Rows of exactly `length` tokens: the prompt's ids, then filler ending at the stop token.
        return [
            [[17] * (length - len(p.prompt_ids) - 1) + self.stop_ids[:1] for _ in range(num_generations)]
            for p in prompts
        ]

    rollout.PolicySampler.__call__ = fixed_completions
    with tempfile.TemporaryDirectory() as scratch:
        # Every rank writes the same files in its own folder: the processes share no disk state.
        folder = Path(scratch)
        base = {
            "model_name_or_path": _model_spec(options, length),
            "finetuning_type": "lora",
            "template": "chatml",
            "dataset_dir": str(folder),
            "cutoff_len": length,
            "do_train": True,
            "max_steps": 2,
            "per_device_train_batch_size": 1,
            "learning_rate": 1e-4,
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
            "logging_steps": 1,
            "disable_gradient_checkpointing": not options["gradient_checkpointing"],
        }
        tokenizer = load_tokenizer(ModelArguments(model_name_or_path=base["model_name_or_path"]))
        prompt = _prompt_of(tokenizer, length // 2 - 16)
        answer = " ".join(str((7 * i) % 991) for i in range(length))
        (folder / "sft.json").write_text(json.dumps([{"instruction": prompt, "output": answer}] * 4))
        (folder / "dataset_info.json").write_text(json.dumps({"sft": {"file_name": "sft.json"}}))
        (folder / "rewards.py").write_text(REWARD)
        keys = {**base, "stage": variant, "dataset": "sft", "output_dir": str(folder / "out")}
        if variant == "ppo":
            _write_reward_model(base, folder / "rm")
            keys.update(reward_model=str(folder / "rm"), reward_model_type="lora", ppo_epochs=1)
        if variant == "grpo":
            keys.update(reward_funcs=[f"{folder / 'rewards.py'}:varied"], num_generations=2)
        if world > 1:
            keys["sequence_parallel_size"] = world
        probe = second_step_peak()
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # no sample generations
            run_stage(load_config(keys), callbacks=[probe])
    return {"peak_mib": probe.peak_mib, "tokens": length}


def peak_at(sp: int):
    def measure(variant: str, length: int, options: dict) -> dict:
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))  # see dpo_vs_sft_length.py
        results = run_ranks(_measure, sp, variant, length, options, timeout=1800)
        return max(results, key=lambda r: r["peak_mib"])

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_search_arguments(parser, "per-rank memory cap (RSS, MiB)")
    parser.add_argument("--sp", type=int, nargs="+", default=[1, 2], help="SP degrees (one rank each)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    options = {key: getattr(args, key) for key in SEARCH_KEYS}
    print(
        f"# cap {args.cap_mib:.0f} MiB per rank; tiny Llama h{args.hidden} x {args.layers} layers, LoRA, "
        f"batch 1{', gradient checkpointing' if args.gradient_checkpointing else ''}; CPU, gloo"
    )
    found = {}
    for sp in args.sp:

        def log(variant, length, result, sp=sp):
            print(f"  SP={sp} {variant:5s} L={length:6d}: peak {result['peak_mib']:.0f} MiB", flush=True)

        for variant in args.variants:
            found[(sp, variant)] = longest_under_cap(variant, options, log, measure=peak_at(sp))
    print(
        "\n| SP | stage | longest prompt + response under the cap | peak MiB there | L / SFT's L at this SP |"
    )
    print("|---|---|---|---|---|")
    for (sp, variant), (length, result) in found.items():
        sft = found.get((sp, "sft"), (None,))[0]
        ratio = f"{length / sft:.2f}" if sft else "-"
        peak = f"{result['peak_mib']:.0f}" if result else "-"
        print(f"| {sp} | {variant} | {length} | {peak} | {ratio} |")


if __name__ == "__main__":
    main()

"""Data path throughput and padding on a long-tailed length distribution.

    python bench/data_pipeline.py [--rows 6000] [--cutoff 1024] [--batch 8] [--workers 1 2]

Writes a synthetic SFT dataset and a pretraining corpus (answer / document lengths drawn from a
log-normal, so most rows are short and a few fill the row) into a temporary folder, then reports:

1. preprocessing speed (rows/s) of `build_datasets` for sft and pt, for each worker count, and
   whether the workers produced exactly the rows of one worker;
2. the share of padded token slots in the batches the trainer would build (batch size --batch,
   padded to the longest row of each batch): unpacked with random order, unpacked with
   group_by_length, greedy concatenation (next fit) and best-fit-decreasing packing;
3. for pretraining: documents cut by concatenating the stream into cutoff blocks versus best-fit
   packing with windows for long documents.

Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ulysses_pro.config.args import DataArguments  # noqa: E402
from ulysses_pro.data.packing import batch_padding_fraction, best_fit_decreasing, next_fit  # noqa: E402
from ulysses_pro.data.pipeline import build_datasets  # noqa: E402
from ulysses_pro.models.tokenizer import load_builtin_tokenizer  # noqa: E402
from ulysses_pro.parallel.sampler import SequenceParallelSampler  # noqa: E402

WORDS = (Path(__file__).resolve().parent.parent / "src/ulysses_pro/assets/corpus.txt").read_text().split()


def _words(rng: random.Random, mean_log: float, cap: int) -> str:
    count = max(1, min(cap, int(rng.lognormvariate(mean_log, 1.1))))
    start = rng.randrange(0, len(WORDS) - count) if len(WORDS) > count else 0
    return " ".join(WORDS[start : start + count])


def write_data(folder: Path, rows: int, cutoff: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    chat = [
        {"instruction": _words(rng, 3.0, cutoff // 4), "output": _words(rng, 4.2, cutoff)}
        for _ in range(rows)
    ]
    corpus = [{"text": _words(rng, 5.0, 4 * cutoff)} for _ in range(rows)]
    (folder / "chat.json").write_text(json.dumps(chat))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    info = {
        "chat": {"file_name": "chat.json"},
        "corpus": {"file_name": "corpus.jsonl", "columns": {"prompt": "text"}},
    }
    (folder / "dataset_info.json").write_text(json.dumps(info))


def packed_lengths(lengths: list[int], bins: list[list[int]]) -> list[int]:
    return [sum(lengths[i] for i in members) for members in bins]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    tokenizer = load_builtin_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_data(folder, args.rows, args.cutoff)

        print(f"\n## Preprocessing ({args.rows} rows, cutoff_len {args.cutoff})\n")
        print("| stage | workers | seconds | rows/s | same rows as 1 worker |")
        print("|---|---|---|---|---|")
        unpacked = {}
        for stage, dataset in (("sft", "chat"), ("pt", "corpus")):
            reference = None
            for workers in args.workers:
                data_args = DataArguments(
                    dataset=dataset,
                    dataset_dir=str(folder),
                    cutoff_len=args.cutoff,
                    packing=False,
                    preprocessing_num_workers=workers,
                    preprocessing_batch_size=500,
                )
                started = time.perf_counter()
                rows = build_datasets(data_args, tokenizer, stage).train.rows
                seconds = time.perf_counter() - started
                reference = reference if reference is not None else rows
                same = "yes" if rows == reference else "NO"
                print(f"| {stage} | {workers} | {seconds:.2f} | {args.rows / seconds:,.0f} | {same} |")
            unpacked[stage] = reference

        print("\n## Memory of the tokenized sft rows\n")
        dataset = build_datasets(
            DataArguments(dataset="chat", dataset_dir=str(folder), cutoff_len=args.cutoff), tokenizer, "sft"
        ).train
        tracemalloc.start()
        as_lists = dataset.rows
        list_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tokens = sum(len(row["input_ids"]) for row in as_lists)
        del as_lists
        print("| storage | MiB | bytes per token |")
        print("|---|---|---|")
        for name, size in (
            ("Python lists", list_bytes),
            ("columns (int32 + offsets)", dataset.store.nbytes()),
        ):
            print(f"| {name} | {size / 2**20:.1f} | {size / tokens:.1f} |")

        print(f"\n## Padding of sft batches (batch {args.batch}, padded to the longest row)\n")
        lengths = [len(row["input_ids"]) for row in unpacked["sft"]]
        count = len(lengths)
        random_order = list(SequenceParallelSampler(count, seed=0))
        grouped_order = list(
            SequenceParallelSampler(count, seed=0, lengths=lengths, group_size=50 * args.batch)
        )
        greedy = packed_lengths(lengths, next_fit(lengths, args.cutoff))
        best = packed_lengths(lengths, best_fit_decreasing(lengths, args.cutoff))
        print("| layout | rows | padding |")
        print("|---|---|---|")
        print(
            f"| unpacked, random order | {count} | {batch_padding_fraction(lengths, random_order, args.batch):.1%} |"
        )
        print(
            f"| unpacked, group_by_length | {count} | {batch_padding_fraction(lengths, grouped_order, args.batch):.1%} |"
        )
        for name, rows in (
            ("greedy concatenation (next fit)", greedy),
            ("best-fit decreasing packing", best),
        ):
            order = list(SequenceParallelSampler(len(rows), seed=0))
            print(f"| {name} | {len(rows)} | {batch_padding_fraction(rows, order, args.batch):.1%} |")

        print(f"\n## Pretraining documents cut (cutoff_len {args.cutoff})\n")
        doc_lengths = []
        for row in (json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()):
            doc_lengths.append(len(tokenizer.encode(row["text"])) + 1)
        total = sum(doc_lengths)
        cut_by_stream, position = 0, 0
        for length in doc_lengths:
            # Cut when a block boundary falls strictly inside the document.
            cut_by_stream += position // args.cutoff != (position + length - 1) // args.cutoff
            position += length
        packed = build_datasets(
            DataArguments(dataset="corpus", dataset_dir=str(folder), cutoff_len=args.cutoff), tokenizer, "pt"
        ).train.packing_report
        print("| method | rows | documents cut | padding to cutoff_len |")
        print("|---|---|---|---|")
        print(
            f"| stream cut into blocks | {total // args.cutoff} | {cut_by_stream} ({cut_by_stream / len(doc_lengths):.1%}) "
            f"| 0% (drops the last {total % args.cutoff} tokens) |"
        )
        print(
            f"| best-fit packing, long documents in windows | {packed.rows} | {packed.cut_documents} "
            f"({packed.truncation_rate:.1%}) | {packed.padding_rate:.1%} |"
        )


if __name__ == "__main__":
    main()

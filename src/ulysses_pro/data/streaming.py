"""`streaming: true`: rows are read, mixed, shuffled, tokenized and packed while training runs.

Nothing is held but a shuffle buffer of `buffer_size` rows (and, when packing, the documents of one
packing window), so a JSON-lines or text dataset may be larger than memory. The stream repeats
forever, reshuffled each pass, and training stops at `max_steps`; this keeps every data-parallel
rank at the same step count even when packing gives the ranks different numbers of rows.

Every rank builds the same stream from the same seed and keeps every k-th row of it (k = DP ranks
x dataloader workers), so the ranks of one SP group see the same rows and DP ranks disjoint ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from .encoding import EncodeSettings, encode_item, to_document
from .errors import DataError, SkippedRows
from .mixing import mix_stream
from .packing import Document, pack_documents
from .preference import pair_kto


def shuffle_buffer(rows: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle with bounded memory: keep `size` rows, emit a random one, refill."""
    buffer: list[Any] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = row
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class StreamSettings:
    """How the stream is built; `shards`/`shard` are set per rank by `shard()`."""

    probabilities: list[float]
    strategy: str
    seed: int
    buffer_size: int
    skip: int  # rows held out at the head of the stream (val_size)
    packing: bool
    isolate: bool  # packed documents do not attend to each other
    shards: int = 1
    shard: int = 0


class StreamingDataset(IterableDataset):
    """Token rows produced on the fly from lazily read sources (see the module docstring)."""

    def __init__(
        self,
        sources: list[Callable[[], Iterator[tuple[Any, Any]]]],
        tokenizer,
        encode: EncodeSettings,
        stream: StreamSettings,
    ):
        self.sources, self.tokenizer, self.encode, self.stream = sources, tokenizer, encode, stream
        self.epoch = 0
        self.skipped = SkippedRows(live=True)

    def shard(self, shards: int, shard: int) -> StreamingDataset:
        """This DP rank's share of the stream."""
        copy = StreamingDataset(
            self.sources, self.tokenizer, self.encode, replace(self.stream, shards=shards, shard=shard)
        )
        copy.epoch = self.epoch
        return copy

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rows(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        """One pass of normalised rows, mixed and shuffled, before sharding."""
        stream = self.stream
        mixed = islice(
            mix_stream(self.sources, stream.strategy, stream.probabilities, stream.seed), stream.skip, None
        )
        if stream.buffer_size > 1:
            mixed = shuffle_buffer(mixed, stream.buffer_size, random.Random(stream.seed * 1_000_003 + epoch))
        return mixed

    def _my_rows(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        shards = self.stream.shards * workers
        return islice(self.rows(epoch), self.stream.shard * workers + worker_id, None, shards)

    def _encoded(self, rows: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, list]]:
        for _, item in rows:
            try:
                yield item, encode_item(self.tokenizer, self.encode, item).outputs
            except DataError as err:
                if not self.encode.skip_invalid_rows:
                    raise
                self.skipped.add(str(err))

    def _one_pass(self, epoch: int) -> Iterator[Document]:
        stage, cutoff = self.encode.stage, self.encode.cutoff_len
        encoded = self._encoded(self._my_rows(epoch))
        if stage in ("dpo", "rm"):
            for _, outputs in encoded:
                yield outputs[0]
            return
        # KTO pairs and packing work on windows of `buffer_size` rows.
        window = max(2, self.stream.buffer_size)
        while True:
            chunk = list(islice(encoded, window))
            if not chunk:
                return
            if stage == "kto":
                pairs = pair_kto([item for item, _ in chunk], [outputs[0] for _, outputs in chunk], cutoff)
                yield from map(to_document, pairs)
                continue
            documents = [doc for _, outputs in chunk for doc in outputs]
            if self.stream.packing:
                documents = pack_documents(documents, cutoff, isolate=self.stream.isolate)
            yield from documents

    def __iter__(self) -> Iterator[Document]:
        epoch = self.epoch
        while True:
            produced = False
            for row in self._one_pass(epoch):
                produced = True
                yield row
            if not produced:
                raise DataError(
                    "the streamed dataset produced no rows for this rank; add data or lower val_size"
                )
            epoch += 1

"""The per-record stages (normalise -> PII -> quality filter), on one core or on every core.

These three are pure per record, so they parallelise: batches go to forked worker processes and come back in
input order (dedup, split and storage stay sequential and deterministic). At most ``2 x workers`` batches are in
flight, so memory stays bounded however large the input. Counters (PII by type, languages, boilerplate lines)
come back with each batch and are merged into the parent's, so the data card is the same either way.

Workers are spawned, not forked (a Celery worker process has threads, and a fork can inherit a lock another
thread held), and only once ``serial_records`` have gone by in-process, so a small job never pays their start-up.
A Celery prefork child is a daemon process and may not start processes; there (and with ``workers=1``) the
stages run in-process.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from trainer.datasets.filters import QualityConfig, QualityFilter
from trainer.datasets.normalise import normalise
from trainer.datasets.pii import PiiScrubber
from trainer.datasets.records import Record

Prepared = tuple[Record, str | None]


class Preparer:
    def __init__(self, pii: str, pseudonym: Callable[[str, str], str] | None, region: str,
                 quality: QualityConfig) -> None:
        self.scrubber = PiiScrubber(pii, pseudonym, region)
        self.quality = QualityFilter(quality)

    def __call__(self, record: Record) -> Prepared:
        return self.quality.check(self.scrubber.scrub(normalise(record)))

    def take_counters(self) -> tuple[Counter[str], Counter[str], int]:
        out = (self.scrubber.counts, self.quality.languages, self.quality.boilerplate_lines)
        self.scrubber.counts, self.quality.languages, self.quality.boilerplate_lines = Counter(), Counter(), 0
        return out

    def add_counters(self, pii: Counter[str], languages: Counter[str], boilerplate: int) -> None:
        self.scrubber.counts.update(pii)
        self.quality.languages.update(languages)
        self.quality.boilerplate_lines += boilerplate


_WORKER: Preparer | None = None  # a worker process's copy


def _init(preparer: Preparer) -> None:
    global _WORKER
    _WORKER = preparer
    preparer.take_counters()  # start from zero: the parent keeps what it counted before the pool started


def _run_batch(batch: list[Record]) -> tuple[list[Prepared], Any]:
    assert _WORKER is not None
    results = [_WORKER(r) for r in batch]
    return results, _WORKER.take_counters()


def prepared(records: Iterator[Record], preparer: Preparer, workers: int = 1, batch_size: int = 256,
             serial_records: int = 5000) -> Iterator[Prepared]:
    records = iter(records)
    if workers <= 1 or multiprocessing.current_process().daemon:
        for r in records:
            yield preparer(r)
        return
    for _, r in zip(range(serial_records), records, strict=False):
        yield preparer(r)
    try:
        first = next(records)
    except StopIteration:
        return
    records = itertools.chain([first], records)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(preparer,)) as pool:
        pending: list[Any] = []

        def batches() -> Iterator[list[Record]]:
            batch: list[Record] = []
            for r in records:
                batch.append(r)
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        for batch in batches():
            pending.append(pool.apply_async(_run_batch, (batch,)))
            while len(pending) >= 2 * workers:
                yield from _collect(pending.pop(0), preparer)
        while pending:
            yield from _collect(pending.pop(0), preparer)


def _collect(result: Any, preparer: Preparer) -> Iterator[Prepared]:
    items, counters = result.get()
    preparer.add_counters(*counters)
    yield from items

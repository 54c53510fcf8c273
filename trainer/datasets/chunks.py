"""A large input split into chunks that several Celery workers prepare in parallel (a chord), which is how the
pipeline grows past one machine:

    process:        ingest once (parsing is cheap and sequential) -> sealed chunks of ``chunk_records`` records
    prepare_chunk:  one per chunk, on any worker: normalise -> PII -> quality filter, counters returned
    finish_chunks:  the chord's callback: the prepared chunks in input order through the rest of the pipeline
                    (exact and near dedup need one global view, so they stay in one pass), then store as usual

Chunks are sealed with the version's data key like shards (``<version>/chunks/…``, never in clear) and deleted
when the version is finished; on failure everything under the version goes. The HMAC pseudonym key is the
version's, so every worker gives a value the same token. The result equals a single pass (tested).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.datasets.shards import Sealer
from gateway.datasets.storage import ObjectStore
from trainer.datasets.ingest import IngestReport, Source, read_records
from trainer.datasets.pipeline import PipelineConfig, PipelineResult, PreparedInput, Progress, run_pipeline
from trainer.datasets.prepare import Preparer
from trainer.datasets.records import Record


def _key(version_id: str, kind: str, index: int) -> str:
    return f"{version_id}/chunks/{kind}-{index:05d}"


def _put(store: ObjectStore, sealer: Sealer, version_id: str, kind: str, index: int, items: list[Any]) -> None:
    data = "".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) + "\n" for x in items).encode()
    store.put(_key(version_id, kind, index), sealer.seal(data, f"chunk:{kind}-{index}"))


def _get(store: ObjectStore, sealer: Sealer, version_id: str, kind: str, index: int) -> list[Any]:
    data = sealer.open(store.get(_key(version_id, kind, index)), f"chunk:{kind}-{index}")
    return [json.loads(line) for line in data.decode().splitlines() if line]


def split_input(source: Path | Source, config: PipelineConfig, store: ObjectStore, sealer: Sealer,
                version_id: str) -> tuple[int, dict[str, Any]]:
    """Parse the input once into sealed chunks; ``(chunks, ingest report)``. Raises IngestError like a single
    pass (``on_error: fail``)."""
    ingest = config.ingest
    if config.tags.label_field and not ingest.label_field:
        ingest = dataclasses.replace(ingest, label_field=config.tags.label_field)
    report = IngestReport(format=ingest.format)
    size = max(1, config.chunk_records)
    count, buf = 0, []
    for record in read_records(source, ingest, report):
        buf.append(record)
        if len(buf) >= size:
            _put(store, sealer, version_id, "in", count, buf)
            count, buf = count + 1, []
    if buf or count == 0:
        _put(store, sealer, version_id, "in", count, buf)
        count += 1
    return count, dataclasses.asdict(report)


def prepare_chunk(config: PipelineConfig, store: ObjectStore, sealer: Sealer, version_id: str, index: int,
                  pseudonym: Callable[[str, str], str] | None) -> dict[str, Any]:
    """Normalise, scrub and filter one chunk; the prepared ``[record, reason]`` pairs are sealed beside it."""
    preparer = Preparer(config.pii, pseudonym, config.pii_region, config.quality)
    items = [list(preparer(r)) for r in _get(store, sealer, version_id, "in", index)]
    _put(store, sealer, version_id, "out", index, items)
    pii, languages, boilerplate = preparer.take_counters()
    return {"index": index, "records": len(items), "pii": dict(pii), "languages": dict(languages),
            "boilerplate_lines": boilerplate}


def finish(source_name: str, config: PipelineConfig, store: ObjectStore, sealer: Sealer, version_id: str,
           chunks: int, report: dict[str, Any], counters: list[dict[str, Any]], *,
           pseudonym: Callable[[str, str], str] | None = None, progress: Progress | None = None,
           ask: Any = None) -> PipelineResult:
    """The rest of the pipeline over the prepared chunks, in input order; the chunks are removed afterwards."""
    done = {c["index"] for c in counters}
    if done != set(range(chunks)):
        store.delete_prefix(version_id)
        raise RuntimeError(f"chunks missing: {sorted(set(range(chunks)) - done)[:10]}")
    pii: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    for c in counters:
        pii.update(c["pii"])
        languages.update(c["languages"])
    ingest = IngestReport(format=report["format"], lines=report["lines"], records=report["records"],
                          skipped=report["skipped"], errors=[tuple(e) for e in report["errors"]])

    def records() -> Iterator[tuple[Record, str | None]]:
        for i in range(chunks):
            yield from ((record, reason) for record, reason in _get(store, sealer, version_id, "out", i))

    pre = PreparedInput(records=records(), report=ingest, pii=dict(pii), languages=dict(languages),
                        boilerplate_lines=sum(c["boilerplate_lines"] for c in counters))
    result = run_pipeline(Path(source_name), config, store=store, sealer=sealer, version_id=version_id,
                          pseudonym=pseudonym, progress=progress, ask=ask, pre=pre)
    store.delete_prefix(f"{version_id}/chunks")
    result.card["chunks"] = chunks
    return result

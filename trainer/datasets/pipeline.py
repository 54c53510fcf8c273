"""The pipeline, stated once: every record flows through the stages below in one streaming pass, then the
stored training split is tokenised and packed.

    ingest -> normalise -> pii -> filters (trainer.datasets.prepare: per record, on every core)
           -> exact_dedup -> near_dedup -> tags + labels -> split -> augment (train only; synthetic rows for
              rare labels after the pass)
           -> bias report -> shards (encrypted, content-addressed) -> tokenise + pack -> manifest + data card

What a stage removes goes to the encrypted quarantine with its reason (after PII removal, so the quarantine
holds no more personal data than the output). On any error everything written for the version is deleted:
nothing half-written is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.datasets.shards import Manifest, Sealer, ShardWriter, iter_split, put_shard, read_shard
from gateway.datasets.storage import ObjectStore
from trainer.datasets import augment, card
from trainer.datasets.augment import SyntheticConfig
from trainer.datasets.bias import BiasConfig, BiasReport
from trainer.datasets.dedup import DedupConfig, ExactDedup, NearDedup
from trainer.datasets.filters import QualityConfig
from trainer.datasets.ingest import IngestConfig, IngestReport, Source, read_records
from trainer.datasets.normalise import normalise
from trainer.datasets.prepare import Preparer, prepared
from trainer.datasets.records import Record, content, joined_text, kind_of, texts
from trainer.datasets.split import split_of
from trainer.datasets.tags import TagConfig, Tagger
from trainer.datasets.tokenise import Encoder, TokeniseConfig, pack, pack_bytes, train_bpe

STAGES = ("ingest", "normalise", "pii", "filters", "exact_dedup", "near_dedup", "augment")
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class PipelineConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pii: str = "redact"
    pii_region: str = "DE"
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    validation_fraction: float = 0.1
    augment: tuple[str, ...] = ()  # "counterfactual", "paraphrase", "backtranslate", "synthetic"
    #: the model alias paraphrases, back-translations and synthetic rows come from (called with the requester's
    #: rights), and how many rows at most per method
    augment_model: str | None = None
    augment_max: int = 1000
    #: back-translation goes through this language (ISO 639-1) and back into the record's own
    augment_pivot: str = "de"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    tags: TagConfig = field(default_factory=TagConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    tokenise: TokeniseConfig = field(default_factory=TokeniseConfig)
    shard_records: int = 10_000
    #: processes for normalise + PII + filters (1 = in-process; a Celery prefork child always runs in-process)
    workers: int = 1
    #: records handled in-process before worker processes start (small jobs never pay their start-up)
    parallel_after: int = 5000
    #: > 0: split the input into chunks of this many records, prepared (normalise + PII + filters) by several
    #: Celery workers in parallel (a chord; ``trainer.datasets.chunks``), then finished in one pass
    chunk_records: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> PipelineConfig:
        raw = dict(raw or {})
        return cls(
            ingest=IngestConfig(**raw.pop("ingest", {})),
            quality=QualityConfig.from_dict(raw.pop("quality", None)),
            dedup=DedupConfig.from_dict(raw.pop("dedup", None)),
            bias=BiasConfig.from_dict(raw.pop("bias", None)),
            tokenise=TokeniseConfig.from_dict(raw.pop("tokenise", None)),
            augment=tuple(raw.pop("augment", ())),
            synthetic=SyntheticConfig.from_dict(raw.pop("synthetic", None)),
            tags=TagConfig.from_dict(raw.pop("tags", None)),
            **raw,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Stage:
    name: str
    records_in: int = 0
    records_out: int = 0
    removed: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "records_in": self.records_in, "records_out": self.records_out,
                "removed": dict(self.removed)}


@dataclass
class PreparedInput:
    """What a chord's chunks hand to the finishing pass: prepared records in input order and what was counted."""

    records: Iterator[tuple[Record, str | None]]
    report: IngestReport
    pii: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    boilerplate_lines: int = 0


@dataclass
class PipelineResult:
    manifest: Manifest
    card: dict[str, Any]


class _Quarantine:
    """Removed records with stage and reason, sealed like the output."""

    def __init__(self, writer: ShardWriter) -> None:
        self.writer = writer

    def put(self, stage: str, reason: str, record: Record) -> None:
        self.writer.add({"stage": stage, "reason": reason, "record": content(record)})


def run_pipeline(source: Path | Source, config: PipelineConfig, *, store: ObjectStore, sealer: Sealer,
                 version_id: str, pseudonym: Callable[[str, str], str] | None = None,
                 progress: Progress | None = None, paraphrase: Callable[[str], str] | None = None,
                 ask: augment.Ask | None = None, pre: PreparedInput | None = None) -> PipelineResult:
    """Process ``source`` into version ``version_id``; on failure delete whatever was stored, then re-raise.
    ``ask(instruction, text) -> answer`` calls a served model (the job supplies it; needed for ``augment:
    paraphrase``, ``backtranslate`` and ``synthetic``); ``paraphrase(text) -> text`` is the older form.
    ``pre``: records already through normalise + PII + filters elsewhere (a chord's chunks), in input order,
    with their ingest report and counters; ``source`` is then only named."""
    if paraphrase is None and ask is not None and "paraphrase" in config.augment:
        paraphrase = lambda text: ask(augment.PARAPHRASE_PROMPT, text)  # noqa: E731
    if "paraphrase" in config.augment and paraphrase is None:
        raise ValueError("augment 'paraphrase' needs a model (augment_model) and the job's inference access")
    for method in ("backtranslate", "synthetic"):
        if method in config.augment and ask is None:
            raise ValueError(f"augment {method!r} needs a model (augment_model) and the job's inference access")
    try:
        return _run(source, config, store, sealer, version_id, pseudonym, progress or (lambda s, f: None),
                    paraphrase, ask, pre)
    except BaseException:
        store.delete_prefix(version_id)
        raise


def _run(source: Path | Source, config: PipelineConfig, store: ObjectStore, sealer: Sealer, version_id: str,
         pseudonym: Callable[[str, str], str] | None, progress: Progress,
         paraphrase: Callable[[str], str] | None, ask: augment.Ask | None,
         pre: PreparedInput | None = None) -> PipelineResult:
    started = time.monotonic()
    manifest = Manifest(version=version_id)
    stages = {name: Stage(name) for name in STAGES}
    report = pre.report if pre is not None else IngestReport(format=config.ingest.format)
    preparer = Preparer(config.pii, pseudonym, config.pii_region, config.quality)
    scrubber, quality = preparer.scrubber, preparer.quality
    exact = ExactDedup() if config.dedup.exact else None
    near = NearDedup(config.dedup) if config.dedup.near else None
    writers = {s: ShardWriter(store, sealer, manifest, s, config.shard_records) for s in ("train", "validation")}
    quarantine = _Quarantine(ShardWriter(store, sealer, manifest, "quarantine", config.shard_records))
    bias_before, bias_after = BiasReport(config.bias), BiasReport(config.bias)
    augmented: dict[str, int] = {}
    failures: Counter[str] = Counter()
    chars = 0
    tagger = Tagger(config.tags, getattr(source, "name", "input"))
    model = config.augment_model or ""
    #: synthetic: training rows per case (label or topic) and a few seed rows of each
    cases: Counter[str] = Counter()
    seeds: dict[str, list[Record]] = {}

    def added(method: str, make: Callable[[], Record | None], base: Record | None) -> Record | None:
        """One model-made row, PII-scrubbed again and carrying its source row's tags; a failed call costs
        that row only (counted), never the job."""
        if augmented.get(method, 0) >= config.augment_max:
            return None
        try:
            extra = make()
        except Exception as exc:  # noqa: BLE001 - a refused or failed call costs one row, not the job
            failures[type(exc).__name__] += 1
            return None
        if extra is None:
            return None
        augmented[method] = augmented.get(method, 0) + 1
        inherited = {k: v for k, v in (base or {}).get("meta", {}).items() if k in ("tags", "labels")}
        return {**scrubber.scrub(normalise(extra)), "meta": {**inherited, **extra["meta"]}}

    def write(split: str, row: Record) -> None:
        nonlocal chars
        bias_after.add(row)
        tagger.count(row, split)
        chars += len(joined_text(row))
        writers[split].add(row)

    ingest_config = config.ingest
    if config.tags.label_field and not ingest_config.label_field:
        ingest_config = dataclasses.replace(ingest_config, label_field=config.tags.label_field)
    progress("ingest", 0.0)
    if pre is not None:
        records: Iterator[tuple[Record, str | None]] = pre.records
        preparer.add_counters(Counter(pre.pii), Counter(pre.languages), pre.boilerplate_lines)
    else:
        records = prepared(read_records(source, ingest_config, report), preparer, config.workers,
                           serial_records=config.parallel_after)
    for n, (record, reason) in enumerate(records, start=1):
        if n % 1000 == 0:
            progress("process", n)
        for name in ("normalise", "pii"):
            stages[name].records_in += 1
            stages[name].records_out += 1
        if not _keep(stages["filters"], quarantine, record, reason):
            continue
        if exact is not None and not _keep(stages["exact_dedup"], quarantine, record,
                                           "duplicate" if exact.is_duplicate(record) else None):
            continue
        if near is not None and not _keep(stages["near_dedup"], quarantine, record,
                                          "near_duplicate" if near.is_duplicate(record) else None):
            continue
        split = split_of(record, config.validation_fraction)
        record = tagger.tag(record)
        out = {**content(record), "meta": record["meta"]}
        rows = [out]
        if split == "train" and "counterfactual" in config.augment:
            extra = augment.counterfactual(out)
            if extra is not None:
                extra["meta"] = {"tags": out["meta"]["tags"], "labels": out["meta"]["labels"], **extra["meta"]}
                rows.append(extra)
                augmented["counterfactual"] = augmented.get("counterfactual", 0) + 1
        if split == "train" and paraphrase is not None:
            extra = added("paraphrase", lambda out=out: augment.paraphrased(out, paraphrase, model), out)
            if extra is not None:
                rows.append(extra)
        if split == "train" and ask is not None and "backtranslate" in config.augment:
            language = out["meta"]["tags"]["language"]
            extra = added("backtranslation", lambda out=out, language=language: augment.backtranslated(
                out, ask, model, config.augment_pivot, language), out)
            if extra is not None:
                rows.append(extra)
        if split == "train" and "synthetic" in config.augment:
            for case in _cases(out, config.synthetic.by):
                cases[case] += 1
                bucket = seeds.setdefault(case, [])
                if len(bucket) < config.synthetic.seeds:
                    bucket.append(out)
        stages["augment"].records_in += 1
        stages["augment"].records_out += len(rows)
        bias_before.add(out)
        for row in rows:
            write(split, row)
    if ask is not None and "synthetic" in config.augment:
        progress("synthetic", 0.0)
        for row in _synthetic(config, ask, model, cases, seeds, report.format, added):
            stages["augment"].records_out += 1
            write("train", row)
    stages["ingest"].records_in = report.records + report.skipped
    stages["ingest"].records_out = report.records
    if report.skipped:
        stages["ingest"].removed["malformed"] = report.skipped
    for w in (*writers.values(), quarantine.writer):
        w.flush()
    progress("tokenise", 0.0)
    tokens = _tokenise(config.tokenise, store, sealer, manifest, progress)
    progress("store", 1.0)
    store.put(f"{version_id}/manifest.json", manifest.to_json())
    data_card = card.build(
        version_id=version_id, config=config, report=report, stages=[s.to_dict() for s in stages.values()],
        pii_counts=dict(scrubber.counts), splits={s: w.records for s, w in writers.items()},
        quarantined=quarantine.writer.records, languages=dict(quality.languages),
        boilerplate_lines=quality.boilerplate_lines,
        duplicates={"exact": exact.removed if exact else 0, "near": near.removed if near else 0,
                    "near_clusters": near.clusters if near else 0},
        bias={"before_augmentation": bias_before.result(), "after_augmentation": bias_after.result()},
        augmentation=augmented, augment_failures=dict(failures), tokens=tokens, chars=chars, digest=manifest.digest,
        tagging=tagger.result(),
        seconds=round(time.monotonic() - started, 3),
    )
    return PipelineResult(manifest=manifest, card=data_card)


def _cases(row: Record, by: str) -> list[str]:
    meta = row.get("meta") or {}
    return list(meta.get("labels", [])) if by == "label" else list((meta.get("tags") or {}).get("topic", []))


def _synthetic(config: PipelineConfig, ask: augment.Ask, model: str, cases: Counter[str],
               seeds: dict[str, list[Record]], fmt: str,
               added: Callable[[str, Callable[[], Record | None], Record | None], Record | None]) -> Iterator[Record]:
    """Rows for rare cases (fewer than ``min_per_label`` training rows; seeded by a few of them), then rows from
    templates. Each carries its case as a label (or topic) so the data card counts it with its case."""
    syn = config.synthetic
    default_kind = fmt if fmt in ("chat", "prompt_completion") else "text"

    def marked(row: Record, case: str, base: Record | None) -> Record:
        tags = dict((base or {}).get("meta", {}).get("tags") or {"language": "und", "topic": []})
        tags["source"] = f"synthetic:{model}"[:64]
        if syn.by == "topic":
            tags["topic"] = sorted({*tags.get("topic", []), case})
        row["meta"] = {**row["meta"], "tags": tags, "labels": [case] if syn.by == "label" else
                       list((base or {}).get("meta", {}).get("labels", []))}
        return row

    for case in sorted(cases):
        for _ in range(max(0, syn.min_per_label - cases[case])):
            base = seeds[case]
            row = added("synthetic", lambda case=case, base=base: augment.synthesised(
                kind_of(base[0]), ask, model, case=case, seeds=base), None)
            if row is not None:
                yield marked(row, case, base[0])
    for template in syn.templates:
        case = str(template["label"])
        for _ in range(int(template.get("count", 1))):
            row = added("synthetic", lambda case=case, t=template: augment.synthesised(
                t.get("kind", default_kind), ask, model, case=case, instruction=t["instruction"]), None)
            if row is not None:
                yield marked(row, case, None)


def _keep(stage: Stage, quarantine: _Quarantine, record: Record, reason: str | None) -> bool:
    stage.records_in += 1
    if reason is None:
        stage.records_out += 1
        return True
    stage.removed[reason] += 1
    quarantine.put(stage.name, reason, record)
    return False


def _tokenise(config: TokeniseConfig, store: ObjectStore, sealer: Sealer, manifest: Manifest,
              progress: Progress) -> dict[str, Any]:
    if not config.tokenizer:
        return {}
    if config.tokenizer.startswith("bpe:"):
        tok = train_bpe((" ".join(texts(r)) for r in iter_split(store, sealer, manifest, "train")),
                        int(config.tokenizer[4:]))
        put_shard(store, sealer, manifest, "tokenizer", "tokenizer.json", tok.to_str().encode(), 0)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(config.tokenizer, local_files_only=True)
    encoder = Encoder(tok)
    out: dict[str, Any] = {"tokenizer": config.tokenizer, "seq_len": config.seq_len}
    for split in ("train", "validation"):
        count = 0
        rows: list[tuple[list[int], list[int]]] = []
        n_rows = 0

        def docs(split: str = split) -> Iterator[list[int]]:
            nonlocal count
            for r in iter_split(store, sealer, manifest, split):
                ids = encoder.encode(r)
                count += len(ids)
                yield ids

        for row in pack(docs(), config.seq_len):
            rows.append(row)
            if len(rows) >= config.rows_per_shard:
                put_shard(store, sealer, manifest, f"{split}.packed", "npz", pack_bytes(rows), len(rows))
                n_rows += len(rows)
                rows = []
        if rows:
            put_shard(store, sealer, manifest, f"{split}.packed", "npz", pack_bytes(rows), len(rows))
            n_rows += len(rows)
        out[split] = {"tokens": count, "packed_rows": n_rows}
        progress("tokenise", 1.0 if split == "validation" else 0.5)
    return out


def sample_quarantine(store: ObjectStore, sealer: Sealer, manifest: Manifest, per_reason: int = 5,
                      seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """A reservoir sample of removed records per ``stage:reason`` for an approver to judge a filter's effect."""
    rng = random.Random(seed)
    samples: dict[str, list[dict[str, Any]]] = {}
    seen: Counter[str] = Counter()
    for entry in manifest.of("quarantine"):
        for line in read_shard(store, sealer, manifest, entry).splitlines():
            item = json.loads(line)
            key = f"{item['stage']}:{item['reason']}"
            seen[key] += 1
            bucket = samples.setdefault(key, [])
            if len(bucket) < per_reason:
                bucket.append(item["record"])
            else:
                j = rng.randrange(seen[key])
                if j < per_reason:
                    bucket[j] = item["record"]
    return samples

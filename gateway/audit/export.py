"""Compliance export: filtered records streamed to JSONL or CSV, with a signed manifest beside the file
(``FILE.manifest.json``), and the offline check of both that needs only the audit public key.

The manifest holds the filters, the seq and time range, the record count, the file's SHA-256, the signed
checkpoints that cover the range and the signing key id; it is signed (Ed25519) over its canonical JSON. Each
exported record keeps its hash and the previous record's hash, so the offline check recomputes every record's
hash, and for an unfiltered export also the chain's links and the checkpoints inside the range.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from gateway.audit.canonical import canonical_details, checkpoint_payload, iso, manifest_payload, record_hash
from gateway.audit.signing import AuditSigner, check_signature, key_id_of, load_public_pem, public_pem
from gateway.audit.verify import _sync_url
from gateway.db.audit import AuditCheckpoint, AuditRecord

FORMAT = "palisade-audit-export/v1"
COLUMNS = (
    "seq",
    "at",
    "tag",
    "actor",
    "target",
    "model",
    "decision",
    "request_id",
    "details",
    "prev_hash",
    "hash",
)
NULL = "\\N"  # CSV cell for a missing value (an empty string stays empty)
_R = AuditRecord.__table__.c


@dataclass
class ExportFilters:
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None  # the tag; a trailing * matches a prefix ("inference:*")
    model: str | None = None
    decision: str | None = None

    def describe(self) -> dict[str, str]:
        return {k: (iso(v) if isinstance(v, datetime) else v) for k, v in vars(self).items() if v is not None}

    def apply(self, query: Any) -> Any:
        if self.since is not None:
            query = query.where(_R.at >= self.since)
        if self.until is not None:
            query = query.where(_R.at < self.until)
        if self.actor is not None:
            query = query.where(_R.actor == self.actor)
        if self.action is not None:
            query = query.where(
                _R.tag.like(self.action[:-1] + "%") if self.action.endswith("*") else _R.tag == self.action
            )
        if self.model is not None:
            query = query.where(_R.model == self.model)
        if self.decision is not None:
            query = query.where(_R.decision == self.decision)
        return query


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def _rows(engine: Any, filters: ExportFilters) -> Iterator[dict[str, Any]]:
    query = filters.apply(select(*[_R[c] for c in COLUMNS]).order_by(_R.seq))
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=10_000).execute(query):
            rec = dict(row._mapping)
            rec["at"] = iso(rec["at"])
            yield rec


def export(
    database_url: str,
    out: Path,
    signer: AuditSigner,
    filters: ExportFilters,
    fmt: str = "jsonl",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    engine = create_engine(_sync_url(database_url))
    digest = hashlib.sha256()
    count, first, last = 0, None, None
    try:
        with open(out, "wb") as f:

            def write(text: str) -> None:
                data = text.encode("utf-8")
                digest.update(data)
                f.write(data)

            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            if fmt == "csv":
                writer.writerow(COLUMNS)
            for rec in _rows(engine, filters):
                if fmt == "csv":
                    writer.writerow([NULL if rec[c] is None else rec[c] for c in COLUMNS])
                else:
                    buf.write(
                        json.dumps(
                            {**rec, "details": json.loads(rec["details"])},
                            ensure_ascii=False,
                            separators=(",", ":"),
                        )
                        + "\n"
                    )
                count += 1
                first = first or rec
                last = rec
                if count % 5000 == 0:
                    write(buf.getvalue())
                    buf.seek(0)
                    buf.truncate()
                    if progress:
                        progress(5000)
            write(buf.getvalue())
            if progress:
                progress(count % 5000)
        with engine.connect() as conn:
            cps = conn.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).all()
    finally:
        engine.dispose()
    lo, hi = (first["seq"], last["seq"]) if first else (0, 0)
    covering = [cp for cp in cps if lo <= cp.seq <= hi] or cps[-1:]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "file": out.name,
        "file_format": fmt,
        "sha256": digest.hexdigest(),
        "bytes": out.stat().st_size,
        "count": count,
        "filters": filters.describe(),
        "range": {
            "first_seq": first["seq"] if first else None,
            "last_seq": last["seq"] if last else None,
            "first_at": first["at"] if first else None,
            "last_at": last["at"] if last else None,
        },
        "checkpoints": [
            {
                "seq": cp.seq,
                "head_hash": cp.head_hash,
                "at": iso(cp.at),
                "kind": cp.kind,
                "key_id": cp.key_id,
                "signature": cp.signature,
            }
            for cp in covering
        ],
        "key_id": signer.key_id,
        "public_key": public_pem(signer.public),
    }
    manifest["signature"] = signer.sign(manifest_payload(manifest))
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class ExportReport:
    count: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_records(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            for rec in csv.DictReader(f):
                out: dict[str, Any] = {k: (None if v == NULL else v) for k, v in rec.items()}
                out["seq"] = int(out["seq"])
                yield out
        else:
            for line in f:
                rec = json.loads(line)
                rec["details"] = canonical_details(rec["details"])
                yield rec


def verify_export(path: Path, public_key_pem: str | None = None) -> ExportReport:
    """Offline: the manifest's signature, the file's hash and count, every record's hash, and (unfiltered) the
    chain links and the checkpoints inside the range."""
    report = ExportReport()
    mpath = manifest_path(path)
    if not mpath.exists():
        report.problems.append(f"manifest {mpath.name} is missing")
        return report
    manifest = json.loads(mpath.read_text())
    if public_key_pem is None:
        public_key_pem = manifest["public_key"]
        report.notes.append(
            "no --public-key given: trusting the key inside the manifest (detects changes, "
            "not a forger who re-signs); pass the key from `palisade audit public-key`"
        )
    key = load_public_pem(public_key_pem)
    keys = {key_id_of(key): key}
    bad = check_signature(
        keys, manifest.get("key_id", ""), manifest_payload(manifest), manifest.get("signature", "")
    )
    if bad:
        report.problems.append(f"manifest: {bad} (key {manifest.get('key_id')})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != manifest["sha256"]:
        report.problems.append(
            f"file sha256 {digest[:16]}… differs from the manifest's {manifest['sha256'][:16]}…"
        )
    for cp in manifest.get("checkpoints", []):
        payload = checkpoint_payload(cp["seq"], cp["head_hash"], cp["at"], cp["kind"], cp["key_id"])
        bad = check_signature(keys, cp["key_id"], payload, cp["signature"])
        if bad:
            report.problems.append(f"checkpoint at seq {cp['seq']}: {bad}")
    signed = {cp["seq"]: cp["head_hash"] for cp in manifest.get("checkpoints", [])}
    unfiltered = not manifest.get("filters")
    prev: dict[str, Any] | None = None
    for rec in _read_records(path, manifest["file_format"]):
        report.count += 1
        calc = record_hash(
            rec["at"],
            rec["tag"],
            rec["actor"],
            rec["target"],
            rec["model"],
            rec["decision"],
            rec["request_id"],
            rec["details"],
            rec["prev_hash"],
        )
        if calc != rec["hash"]:
            report.problems.append(f"record {rec['seq']}: changed (content does not match its hash)")
        if rec["seq"] in signed and signed[rec["seq"]] != rec["hash"]:
            report.problems.append(f"record {rec['seq']}: differs from the signed checkpoint")
        if unfiltered and prev is not None:
            if rec["seq"] != prev["seq"] + 1:
                report.problems.append(f"record(s) {prev['seq'] + 1}..{rec['seq'] - 1}: deleted")
            elif rec["prev_hash"] != prev["hash"]:
                report.problems.append(f"record {rec['seq']}: chain link broken (reordered or changed)")
        prev = rec
    if report.count != manifest["count"]:
        report.problems.append(f"the file has {report.count} records, the manifest says {manifest['count']}")
    return report

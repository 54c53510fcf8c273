"""Audit trail reads for the console: filtered search newest first with an (at, seq) cursor, one record's place
in the chain, and the trail's status. Each page is one index range scan (alembic 0010: the composite
``(column, at, seq)`` indexes let one filter, the time range and the page order share one index)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, tuple_

from gateway.audit.export import ExportFilters
from gateway.console.paging import decode_cursor, encode_cursor
from gateway.db.audit import AuditCheckpoint, AuditHead, AuditRecord
from gateway.db.session import Database

_R = AuditRecord.__table__.c
PAGE = 50
SUMMARY = (_R.seq, _R.at, _R.tag, _R.actor, _R.target, _R.model, _R.decision, _R.request_id)


def parse_time(value: str | None) -> datetime | None:
    """An ``<input type=datetime-local>`` value (no zone) or ISO 8601; a time without a zone is UTC."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def filters_from(params: Any) -> ExportFilters:
    def text(name: str, limit: int = 200) -> str | None:
        value = str(params.get(name) or "").strip()[:limit]
        return value or None

    return ExportFilters(since=parse_time(text("since", 40)), until=parse_time(text("until", 40)),
                         actor=text("actor"), action=text("action", 128), model=text("model", 128),
                         decision=text("decision", 128))


@dataclass
class SearchPage:
    rows: list[Any]
    next_cursor: str | None


def search_query(filters: ExportFilters, cursor: str | None, limit: int = PAGE) -> Any:
    """Newest first on (at, seq): with an equality filter on one column and the time range, the (column, at,
    seq) index yields the page in order, so no page reads more than ``limit + 1`` index entries."""
    q = filters.apply(select(*SUMMARY)).order_by(_R.at.desc(), _R.seq.desc()).limit(limit + 1)
    after = decode_cursor(cursor)
    if after and len(after) == 2 and isinstance(after[1], int):
        at = parse_time(str(after[0]))
        if at is not None:
            # a row-value comparison, so the index sees one range condition (an OR of two would not be)
            q = q.where(tuple_(_R.at, _R.seq) < tuple_(at, after[1]))
    return q


async def search(db: Database, filters: ExportFilters, cursor: str | None, limit: int = PAGE) -> SearchPage:
    async with db.session() as s:
        rows = list((await s.execute(search_query(filters, cursor, limit))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return SearchPage(rows, encode_cursor([rows[-1].at, rows[-1].seq]) if more and rows else None)


@dataclass
class RecordView:
    record: Any
    details: str  # pretty JSON, escaped by the template like any other text
    head_seq: int
    prev_link_ok: bool | None  # the previous record's hash equals this record's prev_hash (None: no previous)
    next_seq: int | None
    checkpoint: Any  # the first signed checkpoint at or after this record (it vouches for it through the chain)


async def record_view(db: Database, seq: int) -> RecordView | None:
    async with db.session() as s:
        rec = (await s.execute(select(AuditRecord).where(AuditRecord.seq == seq))).scalar_one_or_none()
        if rec is None:
            return None
        prev_hash = (await s.execute(select(_R.hash).where(_R.seq == seq - 1))).scalar()
        nxt = (await s.execute(select(_R.seq).where(_R.seq == seq + 1))).scalar()
        cp = (await s.execute(select(AuditCheckpoint).where(AuditCheckpoint.seq >= seq)
                              .order_by(AuditCheckpoint.seq).limit(1))).scalar_one_or_none()
        head = (await s.execute(select(AuditHead.seq).where(AuditHead.id == 1))).scalar() or 0
    try:
        details = json.loads(rec.details)
    except ValueError:
        details = {"raw": rec.details}
    details.pop("content_enc", None)  # encrypted content is read with `palisade audit content`, audited
    pretty = json.dumps(details, indent=2, ensure_ascii=False, sort_keys=True)
    return RecordView(rec, pretty, int(head), None if prev_hash is None else prev_hash == rec.prev_hash, nxt, cp)


@dataclass
class TrailStatus:
    head_seq: int
    head_hash: str
    last_checkpoint: Any
    checkpoints: int
    signer_key_id: str
    external_head: dict[str, Any] | None


async def trail_status(db: Database, chain: Any) -> TrailStatus:
    async with db.session() as s:
        head = (await s.execute(select(AuditHead).where(AuditHead.id == 1))).scalar_one_or_none()
        last = (await s.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc(),
                                                                 AuditCheckpoint.id.desc()).limit(1))
                ).scalar_one_or_none()
        count = int((await s.execute(select(func.count()).select_from(AuditCheckpoint))).scalar() or 0)
    external = None
    head_file = getattr(chain, "head_file", None)
    if head_file is not None and head_file.exists():
        external = _last_line(head_file)
    return TrailStatus(int(head.seq) if head else 0, head.hash if head else "", last, count,
                       getattr(getattr(chain, "signer", None), "key_id", ""), external)


def _last_line(path: Any) -> dict[str, Any] | None:
    """The last line of the external head file, reading only its tail."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 4096))
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None

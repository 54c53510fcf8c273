"""Reading the trail in seq order for ``verify``: batches of plain tuples, the record's time still raw.

``verify`` spends most of its time per record, so the rows come as cheaply as each database allows. On Postgres
through psycopg (the only way the gateway talks to Postgres) they come from the raw driver: a server-side cursor
in binary format, no SQLAlchemy row objects, read ahead by a thread while verify hashes the batch before, and
``at`` as the integer Postgres stores (microseconds since 2000-01-01 UTC). ``iso`` then turns that into the
canonical text without a datetime per record: records written in the same second share the date-and-time prefix.
Any other database (SQLite, the embedded default) reads through SQLAlchemy Core and ``at`` goes through
:func:`gateway.audit.canonical.iso` as it always did. Both give the same ISO text for the same instant
(tests/unit/test_audit_reader.py, tests/integration/test_audit_reader.py).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from gateway.audit.canonical import iso
from gateway.db.audit import AuditRecord

_Batch = list[tuple[Any, ...]]
#: rows per fetch, and per progress report
BATCH = 2_000
_R = AuditRecord.__table__.c
_COLUMNS = (_R.seq, _R.at, _R.tag, _R.actor, _R.target, _R.model, _R.decision, _R.request_id, _R.details,
            _R.prev_hash, _R.hash)
_PG_ROWS = (
    "SELECT seq, at, tag, actor, target, model, decision, request_id, details, prev_hash, hash "
    "FROM audit_records WHERE seq BETWEEN %s AND %s ORDER BY seq"
)
_PG_EPOCH = datetime(2000, 1, 1)  # naive: the prefix is UTC wall time, the offset is written as "+00:00"
_INT8 = 2**63


@dataclass(slots=True)
class TrailRows:
    """One pass over a range of the trail."""

    #: lists of (seq, at, tag, actor, target, model, decision, request_id, details, prev_hash, hash), seq order,
    #: BATCH rows each but the last
    batches: Iterator[list[tuple[Any, ...]]]
    #: a record's ``at`` as read -> its canonical ISO text (what the hash covers)
    iso: Callable[[Any], str]
    #: the stored hash of the record at a seq, or None (the record before the range)
    hash_at: Callable[[int], str | None]
    #: every value but ``at`` is text or None (typed columns), so the walk may skip the per-value type check
    typed: bool = False


@contextmanager
def trail_rows(engine: Engine, from_seq: int | None, to_seq: int | None) -> Iterator[TrailRows]:
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        with _postgres(engine, from_seq, to_seq) as rows:
            yield rows
    else:
        with _generic(engine, from_seq, to_seq) as rows:
            yield rows


@contextmanager
def _generic(engine: Engine, from_seq: int | None, to_seq: int | None) -> Iterator[TrailRows]:
    query = select(*_COLUMNS).order_by(_R.seq)
    if from_seq is not None:
        query = query.where(_R.seq >= from_seq)
    if to_seq is not None:
        query = query.where(_R.seq <= to_seq)
    with engine.connect() as conn:

        def batches() -> Iterator[list[tuple[Any, ...]]]:
            yield from conn.execution_options(yield_per=BATCH).execute(query).partitions()

        def hash_at(seq: int) -> str | None:
            return conn.execute(select(_R.hash).where(_R.seq == seq)).scalar()

        yield TrailRows(batches(), iso, hash_at)


@contextmanager
def _postgres(engine: Engine, from_seq: int | None, to_seq: int | None) -> Iterator[TrailRows]:
    from psycopg.types.numeric import Int8BinaryLoader

    raw = engine.raw_connection()
    try:
        cur = raw.driver_connection.cursor("palisade_audit_verify", binary=True)
        cur.adapters.register_loader("timestamptz", Int8BinaryLoader)  # the stored integer, as it is sent

        def fetch() -> Generator[_Batch]:
            cur.execute(_PG_ROWS, (-_INT8 if from_seq is None else from_seq, _INT8 - 1 if to_seq is None else to_seq))
            while rows := cur.fetchmany(BATCH):
                yield rows

        def hash_at(seq: int) -> str | None:  # on a connection of its own: the trail's belongs to the reading thread
            with engine.connect() as conn:
                return conn.execute(select(_R.hash).where(_R.seq == seq)).scalar()

        try:
            with _prefetched(fetch()) as batches:
                yield TrailRows(batches, pg_iso(), hash_at, typed=True)
        finally:
            cur.close()
    finally:
        raw.close()  # the pool rolls the read-only transaction back


@contextmanager
def _prefetched(batches: Generator[_Batch]) -> Iterator[Generator[_Batch]]:
    """``batches``, the next one read by a thread while the caller works on this one: Postgres produces the next
    rows (and the driver waits for them, the GIL released) while verify hashes these. Half of verify's time was
    that wait. One worker thread does every read (and the final close), so the cursor is never used by two at once;
    an error in a read is raised in the caller at that batch."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-verify-read")

    def ahead() -> Generator[_Batch]:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch

    reader = ahead()
    try:
        yield reader
    finally:
        reader.close()
        pool.submit(batches.close)  # after a read still under way, in the same thread
        pool.shutdown(wait=True)


def pg_iso() -> Callable[[int], str]:
    """Postgres's stored timestamptz (microseconds since 2000-01-01 UTC) -> the text ``iso`` gives for it."""
    second: int | None = None
    prefix = ""

    def to_iso(us: int) -> str:
        nonlocal second, prefix
        s, frac = divmod(us, 1_000_000)
        if s != second:
            try:
                prefix = (_PG_EPOCH + timedelta(seconds=s)).isoformat()
            except OverflowError as exc:  # beyond year 1..9999 (or ±infinity): the old loader refused it too
                raise ValueError(f"audit record time out of range ({us} µs from 2000-01-01 UTC)") from exc
            second = s
        return f"{prefix}.{frac:06d}+00:00"

    return to_iso

"""Reading the trail in seq order for ``verify``: batches of plain tuples, the record's time still raw.

``verify`` spends most of its time per record, so the rows come in batches (one progress report each) and the
walk converts ``at`` with the reader's own ``iso``. Through SQLAlchemy Core ``at`` is a datetime and goes through
:func:`gateway.audit.canonical.iso`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from gateway.audit.canonical import iso
from gateway.db.audit import AuditRecord

#: rows per fetch, and per progress report
BATCH = 10_000
_R = AuditRecord.__table__.c
_COLUMNS = (_R.seq, _R.at, _R.tag, _R.actor, _R.target, _R.model, _R.decision, _R.request_id, _R.details,
            _R.prev_hash, _R.hash)


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


@contextmanager
def trail_rows(engine: Engine, from_seq: int | None, to_seq: int | None) -> Iterator[TrailRows]:
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

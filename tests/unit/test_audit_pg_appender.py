"""The Postgres batch writer of the audit chain (``PgAppender``) against the real Postgres: its fast path (one
prepared statement straight through libpq), the fallback when another process moved the head, and what a failed
statement or a lost connection leaves behind (nothing half-written; the next append reconnects)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from gateway.audit import appender
from gateway.audit.appender import PgAppender
from gateway.audit.canonical import GENESIS, iso, record_hash

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="session")]

SCHEMA = """
CREATE TABLE audit_records (seq bigint PRIMARY KEY, at timestamptz NOT NULL, tag text NOT NULL, actor text,
    target text, model text, decision text, request_id text, details text NOT NULL, prev_hash text NOT NULL,
    hash text NOT NULL);
CREATE TABLE audit_head (id int PRIMARY KEY, seq bigint NOT NULL, hash text NOT NULL);
"""


@pytest.fixture(scope="module")
def db(pg_url: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return pg_url


def batch(n: int, tag: str = "test:record", at: Any = None):
    """A linker for ``n`` records, as the chain makes them."""

    def link(seq: int, prev: str) -> list[dict[str, Any]]:
        rows = []
        for i in range(n):
            seq += 1
            when = at if at is not None else datetime.now(UTC)
            details = f'{{"i":{i},"text":"é ü \\u2028"}}'
            digest = record_hash(iso(when) if isinstance(when, datetime) else str(when), tag, "actor", "target",
                                 None, "allow", f"rid-{seq}", details, prev)
            rows.append({"seq": seq, "at": when, "tag": tag, "actor": "actor", "target": "target", "model": None,
                         "decision": "allow", "request_id": f"rid-{seq}", "details": details, "prev_hash": prev,
                         "hash": digest})
            prev = digest
        return rows

    return link


def chain_of(url: str) -> list[tuple]:
    """Every record, checked: seqs 1..n without a gap, each linked to the one before and hashing to its hash,
    and the head on the last."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq, at, tag, actor, target, model, decision, request_id, details, prev_hash, "
                            "hash FROM audit_records ORDER BY seq").fetchall()
        head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    prev = GENESIS
    for n, (seq, at, tag, actor, target, model, decision, rid, details, prev_hash, digest) in enumerate(rows, 1):
        assert seq == n and prev_hash == prev
        assert record_hash(iso(at), tag, actor, target, model, decision, rid, details, prev) == digest
        prev = digest
    assert head == ((rows[-1][0], rows[-1][-1]) if rows else (0, GENESIS))
    return rows


async def test_two_appenders_share_one_chain_through_the_fast_path_and_its_fallback(db, monkeypatch) -> None:
    calls: list[bytes] = []
    real = appender._pq_call

    async def counted(pgconn, send, *args):
        calls.append(send)
        return await real(pgconn, send, *args)

    monkeypatch.setattr(appender, "_pq_call", counted)
    a, b = PgAppender(db), PgAppender(db)
    try:
        for i in range(24):  # runs of each, then alternating: the other process moved the head every time
            await (a if (i < 8 or 16 <= i and i % 2) else b).append(batch(1 + i % 3))
    finally:
        await a.close()
        await b.close()
    rows = chain_of(db)
    assert len(rows) == sum(1 + i % 3 for i in range(24))
    assert rows[0][8] == '{"i":0,"text":"é ü \\u2028"}'  # the text as written, not re-encoded
    # the fast path ran (one prepared statement per append whose head this appender knew) and fell back when not
    assert calls.count("send_prepare") == 2 and calls.count("send_query_prepared") >= 16


async def test_a_failed_statement_leaves_nothing_and_the_next_append_reconnects(db) -> None:
    a = PgAppender(db)
    try:
        await a.append(batch(2))
        await a.append(batch(1))  # the fast path from here
        before = chain_of(db)
        with pytest.raises(psycopg.errors.DataError):
            await a.append(batch(2, at="not a time"))  # Postgres refuses the batch's timestamp
        assert a._conn is None  # dropped: the next append starts on a fresh connection
        assert chain_of(db) == before  # nothing of the refused batch, head unmoved
        await a.append(batch(3))
    finally:
        await a.close()
    assert len(chain_of(db)) == len(before) + 3


async def test_a_connection_lost_between_appends_fails_one_append_then_the_next_recovers(db) -> None:
    a = PgAppender(db)
    try:
        await a.append(batch(1))
        await a.append(batch(1))
        before = chain_of(db)
        assert a._socket.armed  # the socket stays watched between appends (one registration per connection)
        with psycopg.connect(db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (a._conn.info.backend_pid,))
        for _ in range(100):  # the hang-up is read while nobody waits, and stops the watch (no busy loop on EOF)
            if not a._socket.armed:
                break
            await asyncio.sleep(0.01)
        assert not a._socket.armed
        with pytest.raises(psycopg.OperationalError):
            await a.append(batch(1))
        assert a._conn is None and chain_of(db) == before
        await a.append(batch(2))
    finally:
        await a.close()
    assert len(chain_of(db)) == len(before) + 2

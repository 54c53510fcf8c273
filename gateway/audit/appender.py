"""The audit chain's batch writers: one dedicated database connection each, raw driver calls, no ORM per batch.

``append(link)`` appends one batch as ONE transaction and returns its rows; ``link(seq, prev_hash)`` turns the
batch's prepared rows into chained rows (seq and hash) starting after that head. The ``audit_head`` row still
serialises appends from every process into one chain:

- Postgres (``PgAppender``): the common case is ONE round trip and one autocommitted statement: a CTE moves the
  head from the head this process last wrote to the batch's last record and inserts the batch only if the head
  was still there (the UPDATE waits on the row lock; an appender in another process that got in first makes it
  match nothing). On a miss, or when the head is not known yet, the batch is appended the pessimistic way:
  ``SELECT … FOR UPDATE`` the head, link, insert, commit. Timeouts are set once per connection.
- SQLite (``SqliteAppender``): the whole transaction (``BEGIN IMMEDIATE`` takes the database's write lock, read
  the head, insert, move the head, commit) runs in one hop to a dedicated thread instead of one per statement.

A failed batch drops its connection (the next batch reconnects) and raises: the caller fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from sqlalchemy.engine import make_url

from gateway.audit.canonical import GENESIS
from gateway.db.audit import AuditRecord

#: prepared rows (seq 0 / no hash yet) -> chained rows
Linker = Callable[[int, str], list[dict[str, Any]]]

_encode_json = msgspec.json.Encoder().encode

COLUMNS = ("seq", "at", "tag", "actor", "target", "model", "decision", "request_id", "details", "prev_hash", "hash")
_PG_TYPES = ("bigint", "timestamptz", *(["text"] * 9))

_PG_HEAD_LOCK = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE"
_PG_SEED = "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING"
_PG_MOVE_HEAD = "UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1 AND seq = %s AND hash = %s RETURNING id"
_PG_RECORDSET = ", ".join(f"{c} {t}" for c, t in zip(COLUMNS, _PG_TYPES, strict=True))
#: fixed column names and placeholders only: no value is ever formatted into the text. The batch travels as ONE
#: JSON parameter (encoded in C; adapting eleven Python lists to Postgres arrays cost ~130 µs per batch)
_PG_APPEND = " ".join((
    f"WITH head AS ({_PG_MOVE_HEAD})",
    f"INSERT INTO audit_records ({', '.join(COLUMNS)})",
    f"SELECT {', '.join(COLUMNS)} FROM json_to_recordset(%s::json) AS r({_PG_RECORDSET})",  # noqa: S608
    "WHERE EXISTS (SELECT 1 FROM head)",
))


def _pg_params(rows: list[dict[str, Any]], base_seq: int, base_hash: str) -> list[Any]:
    last = rows[-1]
    # msgspec writes ``at`` (an aware datetime, exact to the µs) as RFC 3339 itself: no Python call per row
    return [last["seq"], last["hash"], base_seq, base_hash, _encode_json(rows).decode()]


class PgAppender:
    def __init__(self, database_url: str, *, lock_timeout: str = "5s", statement_timeout: str = "15s") -> None:
        self.conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.timeouts = (lock_timeout, statement_timeout)
        self._conn: Any = None
        self._socket: _Socket | None = None  # the connection's socket as the event loop watches it
        self._head: tuple[int, str] | None = None  # what this process last wrote (a guess for the fast path)

    async def _connect(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, connect_timeout=5)
        self._conn = conn  # dropped (socket watch first) by append's failure path if the rest fails
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
            self.timeouts,
        )
        self._socket = _Socket(conn.pgconn)
        await _pq_call(self._socket, "send_prepare", _PQ_APPEND_NAME, _PQ_APPEND)
        return conn

    async def append(self, link: Linker) -> list[dict[str, Any]]:
        try:
            conn = self._conn or await self._connect()
            if self._head is not None and self._socket is not None:
                # fast path: one statement, one round trip, committed on return
                seq, prev = self._head
                rows = link(seq, prev)
                params = _pg_params(rows, seq, prev)
                result = await _pq_call(self._socket, "send_query_prepared", _PQ_APPEND_NAME,
                                        [str(v).encode() for v in params])
                if result.command_tuples == len(rows):
                    self._head = (rows[-1]["seq"], rows[-1]["hash"])
                    return rows
            if self._socket is not None:
                self._socket.disarm()  # psycopg watches the socket itself for these statements
            async with conn.transaction():  # another process moved the head (or it is unknown): lock, then append
                row = await (await conn.execute(_PG_HEAD_LOCK)).fetchone()
                if row is None:  # tables made without the migration's seed row
                    await conn.execute(_PG_SEED, (GENESIS,))
                    row = await (await conn.execute(_PG_HEAD_LOCK)).fetchone()
                seq, prev = int(row[0]), row[1]
                rows = link(seq, prev)
                cur = await conn.execute(_PG_APPEND, _pg_params(rows, seq, prev))
                if cur.rowcount != len(rows):
                    raise RuntimeError("audit head moved while locked")
            self._head = (rows[-1]["seq"], rows[-1]["hash"])
            return rows
        except BaseException:
            await self._drop()
            raise

    async def _drop(self) -> None:
        conn, self._conn, self._head = self._conn, None, None
        if self._socket is not None:
            self._socket.disarm()  # before the socket closes: its number may be reused by the next one
            self._socket = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        await self._drop()


def _numbered(sql: str) -> bytes:
    """psycopg's ``%s`` placeholders as libpq's ``$1, $2, …``."""
    parts = sql.split("%s")
    return (parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))).encode()


_PQ_APPEND_NAME = b"palisade_audit_append"
_PQ_APPEND = _numbered(_PG_APPEND)


class _Socket:
    """A connection's socket, registered with the event loop once instead of once per statement: adding and
    removing a reader around every wait cost four ``epoll_ctl`` calls (two of them failing) per append, and reading
    before the answer could have come one more. Between statements nobody waits: a notice is read into libpq's
    buffer; a hang-up stops the watch, and the next statement fails on the closed connection and drops it."""

    __slots__ = ("loop", "pgconn", "fd", "waiter", "armed")

    def __init__(self, pgconn: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.pgconn = pgconn
        self.fd: int = pgconn.socket
        self.waiter: asyncio.Future[None] | None = None
        self.armed = False

    def arm(self) -> None:
        if not self.armed:
            self.loop.add_reader(self.fd, self._readable)
            self.armed = True

    def disarm(self) -> None:
        if self.armed:
            self.armed = False
            self.loop.remove_reader(self.fd)

    def _readable(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
            return
        try:
            self.pgconn.consume_input()
        except Exception:  # noqa: BLE001 - the server hung up: the next statement raises it and reconnects
            self.disarm()

    async def readable(self) -> None:
        self.arm()
        self.waiter = waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None


async def _pq_call(sock: _Socket, send: str, *args: Any) -> Any:
    """One statement straight through libpq (``psycopg.pq``, the driver's own binding): send, then read its one
    result, waiting on the socket through the event loop. The fast path's append runs on every request; psycopg's
    cursor (query conversion, parameter adaptation, result objects) cost ~100 µs more CPU per call than this.
    Raises the driver's error for a failed statement; the caller then drops the connection."""
    import psycopg
    from psycopg import pq

    pgconn = sock.pgconn
    getattr(pgconn, send)(*args)
    while pgconn.flush():  # the rest of the statement once the socket takes it (nonblocking connection)
        await _ready(sock.loop.add_writer, sock.loop.remove_writer, sock.fd)
    results = []
    while True:
        await sock.readable()  # nothing can have come back before the statement left: wait, then read
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                if len(results) != 1:
                    raise psycopg.OperationalError(f"expected one result, got {len(results)}")
                if results[0].status != pq.ExecStatus.COMMAND_OK:
                    raise psycopg.errors.error_from_result(results[0])
                return results[0]
            results.append(result)


async def _ready(add: Callable[..., Any], remove: Callable[[int], Any], fd: int) -> None:
    """Until the event loop sees ``fd`` ready (``add``/``remove``: its reader or its writer callbacks)."""
    ready = asyncio.get_running_loop().create_future()
    add(fd, ready.set_result, None)
    try:
        await ready
    finally:
        remove(fd)


_SQLITE_INSERT = f"INSERT INTO audit_records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608


class SqliteAppender:
    def __init__(self, path: str, at_to_db: Callable[[Any], Any]) -> None:
        self.path = path
        self.at_to_db = at_to_db  # SQLAlchemy's own bind processor for the column: stored exactly as the ORM does
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=5000"):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    async def append(self, link: Linker) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._append, link)

    def _append(self, link: Linker) -> list[dict[str, Any]]:
        conn = self._conn or self._connect()
        self._conn = conn
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: every appender in every process queues here
            head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            if head is None:
                conn.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, ?)", (GENESIS,))
                head = (0, GENESIS)
            rows = link(int(head[0]), head[1])
            at = self.at_to_db
            conn.executemany(
                _SQLITE_INSERT,
                [(r["seq"], at(r["at"]), r["tag"], r["actor"], r["target"], r["model"], r["decision"],
                  r["request_id"], r["details"], r["prev_hash"], r["hash"]) for r in rows],
            )
            conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (rows[-1]["seq"], rows[-1]["hash"]))
            conn.execute("COMMIT")
            return rows
        except BaseException:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            with contextlib.suppress(Exception):
                conn.close()
            raise

    async def close(self) -> None:
        def _close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self._thread, _close)
        self._thread.shutdown(wait=False)


def appender_for(settings: Any, engine: Any) -> PgAppender | SqliteAppender | None:
    """The dedicated writer for this database, or None (the generic SQLAlchemy path) for anything else."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "postgresql":
        return PgAppender(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        at_type = AuditRecord.__table__.c.at.type.dialect_impl(engine.dialect)
        processor = at_type.bind_processor(engine.dialect) or (lambda v: v)
        return SqliteAppender(url.database, processor)
    return None

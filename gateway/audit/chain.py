"""``AuditChain``: the durable, hash-chained audit trail (the gateway's ``services.audit``).

``await chain.record(event)`` returns only after the record's transaction committed, and raises
``AuditUnavailable`` (a 503 ApiError, so every audited path fails closed) when it cannot. Concurrent records are
group-committed: one writer task drains a queue and appends a batch per transaction. Each batch first locks the
``audit_head`` row, so appends from every gateway process on one database form ONE chain. Checkpoints (Ed25519
over seq + head hash) are signed every N records and every T seconds, also when idle, and each is appended to an
external head file too, so a truncated tail is detectable even if the database is rewritten.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, insert, select, update

from gateway.audit.appender import appender_for
from gateway.audit.canonical import GENESIS, canonical_details, checkpoint_payload, iso, record_hash
from gateway.audit.events import AuditEvent
from gateway.audit.pins import keys_file_of, pinner
from gateway.audit.readiness import chain_ready, store_accepts
from gateway.audit.shipping import Sink, sinks_from_settings
from gateway.audit.signing import AuditSigner
from gateway.db.audit import AuditCheckpoint, AuditHead, AuditRecord
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.errors import ServiceUnavailable
from gateway.metrics import AUDIT_LATE_FAILED
from gateway.observability import tracing
from gateway.settings import Settings

PROBE_EVERY_S = 1.0
_log = structlog.get_logger("palisade.audit")
_SECRET_KEY = re.compile(
    r"(authorization|api[_-]?key|secret|password|token|cookie|totp|otp|seed|credential)", re.I
)
_SECRET_VALUE = re.compile(
    r"pal_[0-9a-f]{12}_[A-Za-z0-9_-]{43}|Bearer\s+\S+|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\."
)
_PLAIN = frozenset((int, float, bool))
_RECORDS = AuditRecord.__table__


def _credential_like(value: str) -> bool:
    """``_SECRET_VALUE`` on ``value``, after the substring test every match needs (most values fail it)."""
    return ("pal_" in value or "Bearer" in value or "eyJ" in value) and _SECRET_VALUE.search(value) is not None


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Values under this details key are secrets (the key names are few: looked up once each)."""
    return bool(_SECRET_KEY.search(key)) and not key.endswith(("_count", "_tokens"))

BATCH_MAX = 2000
#: a batch of records nobody waits for (completions, after their answer left) waits this long for a record someone
#: does wait for (the next request's accepted record) and commits with it: under load one commit per request, not two
LATER_LINGER_S = 0.025


class AuditUnavailable(ServiceUnavailable):
    def __init__(
        self, message: str = "the audit trail cannot record this request; refusing to answer"
    ) -> None:
        super().__init__(message)


def head_file_of(settings: Settings) -> Path:
    return settings.audit_head_file or settings.data_dir / "audit-head.jsonl"


class AuditChain:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keyring: Any,
        signer: AuditSigner,
        sinks: list[Sink] | None = None,
    ) -> None:
        self.settings, self.db, self.keyring, self.signer = settings, db, keyring, signer
        self.sinks = sinks or []
        self.head_file = head_file_of(settings)
        self._queue: asyncio.Queue[tuple[AuditEvent, asyncio.Future[int]] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_cp_seq = 0
        self._closed = False
        self.checkpoint_ok = True  # the last checkpoint was signed and stored (both copies)
        #: the store refused the last append (or a readiness probe): callers ask ``accepting()`` before doing work
        #: whose record could not be written (an upstream call), so a refusing store costs no model time
        self.refusing = False
        self._probed_at = 0.0
        self._appender = appender_for(settings, db.engine)  # a dedicated connection for the batch writer
        self._cp_task: asyncio.Task[None] | None = None
        self._later: set[asyncio.Future[int]] = set()  # record_later appends not committed yet

    @classmethod
    async def open(cls, settings: Settings, db: Database, keyring: Any) -> AuditChain:
        signer = await AuditSigner.load_or_create(db, keyring, pinner(keys_file_of(settings)))
        chain = cls(
            settings, db, keyring, signer, sinks_from_settings(settings.audit_ship, settings.audit_syslog)
        )
        await chain.start()
        return chain

    async def start(self) -> None:
        async with self.db.session() as s:
            self._last_cp_seq = (await s.execute(select(func.max(AuditCheckpoint.seq)))).scalar() or 0
        self._writer = asyncio.create_task(self._write_loop(), name="audit-writer")
        self._ticker = asyncio.create_task(self._tick_loop(), name="audit-checkpoints")
        self._pruner: asyncio.Task | None = None

    def adopt(self, task: asyncio.Task | None) -> None:
        """A task that works on this chain (scheduled retention) and stops with it."""
        if task is not None:
            self._pruner = task

    # --- the one audit call ------------------------------------------------------------------------------
    async def record(self, event: AuditEvent) -> int:
        """Append ``event`` durably; returns its seq. Raises AuditUnavailable (503) when it cannot."""
        if tracing.enabled():
            with tracing.span("audit.record", tag=event.tag):
                return await self._durable(self.submit(event))
        return await self._durable(self.submit(event))

    def submit(self, event: AuditEvent, *, deadline: bool = True) -> asyncio.Future[int]:
        """Queue ``event`` now, without waiting: the future resolves with its seq once its batch committed, or
        fails with AuditUnavailable. So a caller can let the commit overlap other work (the upstream call) and
        await it only where it must be durable. With ``deadline`` it fails after ``audit_write_timeout_s`` (the
        record may still commit later, but the caller refuses now)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self._closed or self._writer is None or self._writer.done():
            future.set_exception(AuditUnavailable())
            self.refusing = True
            return future
        event.at = event.at or utcnow()
        if tracing.enabled():
            trace_id = tracing.current_trace_id()
            if trace_id and "trace_id" not in event.details:
                event.details = {**event.details, "trace_id": trace_id}  # joins the record to its trace
        self._queue.put_nowait((event, future))
        # a timer, not wait_for + shield (two extra futures per request)
        timer = loop.call_later(self.settings.audit_write_timeout_s, _expire, future) if deadline else None
        future.add_done_callback(lambda f: self._settled(f, timer))
        return future

    def _settled(self, future: asyncio.Future[int], timer: asyncio.TimerHandle | None) -> None:
        """Runs before whoever awaits the future resumes: the store's state is known by then."""
        if timer is not None:
            timer.cancel()
        if future.cancelled():  # its waiter went away; the record itself may still commit
            return
        self.refusing = future.exception() is not None  # (also marks the exception retrieved)

    async def _durable(self, future: asyncio.Future[int]) -> int:
        try:
            return await future
        except AuditUnavailable:
            raise
        except Exception as exc:
            raise AuditUnavailable() from exc

    def record_later(self, event: AuditEvent) -> None:
        """Append ``event`` without anyone waiting for it (an inference completion, after its answer left): a
        failure is logged loudly and counted (``palisade_audit_late_record_failed_total``), never raised, and
        ``palisade audit verify`` then lists the request as open. ``flush()`` waits for these."""
        future = self.submit(event, deadline=False)
        self._later.add(future)
        future.add_done_callback(lambda f: self._later_done(f, event))

    def _later_done(self, future: asyncio.Future[int], event: AuditEvent) -> None:
        self._later.discard(future)
        if future.cancelled() or future.exception() is not None:
            AUDIT_LATE_FAILED.labels(event.tag).inc()
            _log.error("audit record after the answer was NOT written; verify lists the request as open",
                       tag=event.tag, request_id=event.request_id, actor=event.actor, target=event.target)

    async def flush(self) -> None:
        """Wait until every ``record_later`` record queued so far is committed (or failed)."""
        if self._later:
            await asyncio.wait(set(self._later))

    async def accepting(self) -> bool:
        """False while the store is known to refuse appends; then at most one probe a second (an append rolled
        back, as /readyz does) finds out whether it accepts again."""
        if self._closed or self._writer is None or self._writer.done():
            return False
        if not self.refusing:
            return True
        now = time.monotonic()
        if now - self._probed_at < PROBE_EVERY_S:
            return False
        self._probed_at = now
        self.refusing = not await store_accepts(self)
        return not self.refusing

    # --- group commit -------------------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = self._take_queued(batch)
            if not stop and all(future in self._later for _, future in batch):
                try:  # nobody waits for these: the next record someone waits for carries them in its commit
                    async with asyncio.timeout(LATER_LINGER_S):
                        item = await self._queue.get()
                except TimeoutError:
                    pass  # (an item that arrived meanwhile stays queued for the next batch)
                else:
                    stop = item is None or self._take_queued(batch, item)
            await self._write_batch(batch)
            if stop:
                return

    def _take_queued(self, batch: list[tuple[AuditEvent, asyncio.Future[int]]],
                     first: tuple[AuditEvent, asyncio.Future[int]] | None = None) -> bool:
        """Append ``first`` and what is queued now to ``batch`` (up to BATCH_MAX); True when a stop came."""
        if first is not None:
            batch.append(first)
        while len(batch) < BATCH_MAX and not self._queue.empty():
            nxt = self._queue.get_nowait()
            if nxt is None:
                return True
            batch.append(nxt)
        return False

    async def _write_batch(self, batch: list[tuple[AuditEvent, asyncio.Future[int]]]) -> None:
        try:
            rows = await self._append([e for e, _ in batch])
        except Exception as exc:
            _log.error(
                "audit append failed; requests fail closed", error=type(exc).__name__, detail=str(exc)[:300]
            )
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(AuditUnavailable())
            return
        for (_, fut), row in zip(batch, rows, strict=True):
            if not fut.done():
                fut.set_result(row["seq"])
        self._ship(rows)
        if rows[-1]["seq"] - self._last_cp_seq >= self.settings.audit_checkpoint_every and (
            self._cp_task is None or self._cp_task.done()
        ):
            # signed off the writer's path: the next batch does not wait for a signature and an fsync
            self._cp_task = asyncio.create_task(self._safe_checkpoint(), name="audit-checkpoint")

    async def _append(self, events: list[AuditEvent]) -> list[dict[str, Any]]:
        prepared = [self._prepare(e) for e in events]  # scrub + canonicalise outside the transaction

        def link(seq: int, prev: str) -> list[dict[str, Any]]:
            rows = []
            for p in prepared:
                seq += 1
                row = {**p, "seq": seq, "prev_hash": prev}
                row["hash"] = prev = record_hash(
                    iso(p["at"]), p["tag"], p["actor"], p["target"], p["model"], p["decision"], p["request_id"],
                    p["details"], prev,
                )
                rows.append(row)
            return rows

        if self._appender is not None:
            return await self._appender.append(link)
        async with self.db.engine.begin() as conn:  # any other database: the generic SQLAlchemy path
            seq, prev = await _lock_head(conn)
            rows = link(seq, prev)
            await conn.execute(insert(_RECORDS), rows)
            last = rows[-1]
            await conn.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=last["seq"], hash=last["hash"]))
        return rows

    def _prepare(self, event: AuditEvent) -> dict[str, Any]:
        raw = event.details or {}
        model = raw.get("model")
        if model is None and event.tag.startswith("inference:"):
            model = event.target
        return {
            "at": event.at or utcnow(),
            "tag": event.tag,
            "actor": event.actor,
            "target": event.target,
            "model": model,
            "decision": event.decision,
            "request_id": event.request_id,
            "details": canonical_details(self._scrub(raw)) if raw else "{}",
        }

    def _scrub(self, value: Any, key: str = "") -> Any:
        """Secrets never enter the trail: values under secret-looking keys, or that look like credentials,
        become keyed HMACs (still matchable by whoever holds the keyring)."""
        if isinstance(value, dict):
            # one call per dict, not per value: numbers, booleans and None are never secrets, and a plain string
            # (most of a record's details) is checked here
            out = {}
            for k, v in value.items():
                cls = v.__class__
                if v is None or cls in _PLAIN:
                    out[k] = v
                elif cls is str:
                    secret = v and (_secret_key(str(k)) or _credential_like(v))
                    out[k] = "hmac:" + self.keyring.hmac("audit-hmac", v) if secret else v
                else:
                    out[k] = self._scrub(v, str(k))
            return out
        if isinstance(value, list | tuple):
            return [self._scrub(v, key) for v in value]
        if (
            isinstance(value, str | bytes)
            and value
            and (_secret_key(key) or (isinstance(value, str) and _credential_like(value)))
        ):
            return "hmac:" + self.keyring.hmac("audit-hmac", value)
        return value

    def _ship(self, rows: list[dict[str, Any]]) -> None:
        if not self.sinks:
            return
        shipped = [{**r, "at": iso(r["at"]), "details": json.loads(r["details"])} for r in rows]
        for sink in self.sinks:
            try:
                sink.ship(shipped)
            except Exception as exc:
                _log.warning("audit shipping failed", sink=type(sink).__name__, error=type(exc).__name__)

    # --- signed checkpoints -------------------------------------------------------------------------------
    async def checkpoint(
        self, kind: str = "periodic", *, seq: int | None = None, head_hash: str | None = None
    ) -> dict[str, Any]:
        """Sign the current head (or the given seq/hash, for a pruning anchor), store it, append it outside."""
        async with self.db.engine.begin() as conn:
            head_seq, head = await _lock_head(conn)
            seq = head_seq if seq is None else seq
            head_hash = head if head_hash is None else head_hash
            at = utcnow()
            cp = {"seq": seq, "head_hash": head_hash, "at": at, "kind": kind, "key_id": self.signer.key_id}
            cp["signature"] = self.signer.sign(
                checkpoint_payload(seq, head_hash, iso(at), kind, self.signer.key_id)
            )
            await conn.execute(insert(AuditCheckpoint.__table__), [cp])
        self._last_cp_seq = max(self._last_cp_seq, seq)
        line = {**cp, "at": iso(at)}
        await asyncio.to_thread(append_head_line, self.head_file, line)  # fsync off the event loop
        return line

    async def _safe_checkpoint(self) -> None:
        try:
            await self.checkpoint()
        except Exception as exc:
            self.checkpoint_ok = False  # /readyz says so until one succeeds again
            _log.error("audit checkpoint failed", error=type(exc).__name__)
        else:
            self.checkpoint_ok = True

    async def ready(self) -> bool:
        """For /readyz (gateway.audit.readiness): writer running, checkpoints signing, store accepting appends."""
        ok = await chain_ready(self)
        if ok:
            self.refusing = False  # its probe append just went through
        elif not self._closed:  # seen here first (a load balancer's probe): refuse before model work too
            self.refusing = not await store_accepts(self)
        return ok

    async def _tick_loop(self) -> None:
        interval = self.settings.audit_checkpoint_interval_s
        while True:
            await asyncio.sleep(interval)
            await self._safe_checkpoint()  # also when idle: a fresh signature says "nothing happened since"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_pruner", None) is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._writer is not None and not self._writer.done():
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer, timeout=10)
        if self._cp_task is not None:
            with contextlib.suppress(Exception):
                await self._cp_task
        if self._appender is not None:
            await self._appender.close()
        await self._safe_checkpoint()
        for sink in self.sinks:
            sink.close()


def _expire(future: asyncio.Future[int]) -> None:
    if not future.done():
        future.set_exception(AuditUnavailable())


async def _lock_head(conn: Any) -> tuple[int, str]:
    """Take the head row's write lock first (UPDATE locks it on Postgres and takes SQLite's write lock at once),
    then read it: every appender in every process queues here."""
    res = await conn.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq))
    if res.rowcount == 0:  # tables made without the migration's seed row
        await conn.execute(insert(AuditHead.__table__), [{"id": 1, "seq": 0, "hash": GENESIS}])
    row = (await conn.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one()
    return int(row.seq), row.hash


def append_head_line(path: Path, line: dict[str, Any]) -> None:
    """One JSON line, appended and fsynced: the external copy of the latest signed head."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def record_once(settings: Settings, db: Database, event: AuditEvent) -> int:
    """Record one event from a short-lived process (the CLI): open the chain, append, checkpoint, close."""
    from gateway.crypto import open_keyring

    keyring = await open_keyring(settings, db)
    chain = await AuditChain.open(settings, db, keyring)
    try:
        return await chain.record(event)
    finally:
        await chain.close()

"""Runs one batch: validate, then every line through the inference entry point, then write the output files.

Durable and resumable: each finished line's output is committed (encrypted) as soon as it exists, keyed by its
line (and so its custom_id); a runner that starts on a batch skips the lines already answered. A runner holds the
batch under a lease it renews every few seconds; a killed worker's lease runs out and the next runner (a new
worker's start-up scan, or the task redelivered) carries on from what was committed. Cancel and expiry stop new
lines, keep the finished ones and write them out (``cancelled`` / ``expired`` with partial results).

The inference itself is an injected ``Executor`` (``executor.py`` builds the real one over the gateway's
services), so the runner is the same in a Celery worker, a test and the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway.audit.events import AuditEvent, Tag
from gateway.batches.lines import Line, check_models, iter_lines, parse_line, validate
from gateway.batches.service import ACTIVE
from gateway.batches.storage import PURPOSE, FileStore, StorageError
from gateway.db.base import utcnow
from gateway.db.batches import Batch, BatchFile, BatchResult

_log = structlog.get_logger("palisade.batches.runner")

RETRYABLE = (429, 503)  # limited or shed: the line waits and tries again (batch traffic yields to interactive)
MAX_RETRIES = 60  # with the back-off capped at 15 s: a line gives up (and records the refusal) after ~15 minutes
RESULTS_PAGE = 500


class Executor(Protocol):
    async def model_allowed(self, model: str) -> bool: ...

    async def infer(self, line: Line, request_id: str) -> tuple[int, dict[str, Any]]:
        """Run one line as the batch owner; (HTTP status, response body) exactly as the API would answer."""
        ...


def output_file_id(batch_id: str, kind: str) -> str:
    """Deterministic, so finalising twice (a crash in between) rewrites the same file instead of a second one."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


class BatchRunner:
    def __init__(self, *, db: Any, store: FileStore, audit: Any, settings: Any,
                 executor_for: Callable[[Batch], Awaitable[Executor]], retry_delay_s: float = 1.0) -> None:
        self.db, self.store, self.audit, self.settings = db, store, audit, settings
        self.keyring = store.keyring
        self.executor_for = executor_for
        self.lease = timedelta(seconds=settings.batch_lease_s)
        self.retry_delay_s = retry_delay_s
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stop: str | None = None  # "cancel", "expire" or "lost" (another runner took the lease)

    # ------------------------------------------------------------------ entry
    async def run(self, batch_id: str) -> str:
        """Drive the batch as far as it goes; returns its status, or "busy" when another runner holds it."""
        if not await self._claim(batch_id):
            async with self.db.session() as s:
                row = await s.get(Batch, batch_id)
            return "busy" if row is not None and row.status in ACTIVE else (row.status if row else "missing")
        heartbeat = asyncio.create_task(self._heartbeat(batch_id))
        try:
            batch = await self._load(batch_id)
            if batch.expires_at is not None and utcnow() >= batch.expires_at:
                self._stop = "expire"  # found after its window (no worker ran it in time): finish with what is there
            executor = await self.executor_for(batch)
            if batch.status == "validating" and self._stop is None:
                batch = await self._validate(batch, executor)
            if batch.status == "in_progress" and self._stop is None:
                await self._run_lines(batch, executor)
                batch = await self._load(batch_id)
            if self._stop == "lost":
                return "busy"
            if batch.status in ("in_progress", "finalizing") and self._stop is None:
                return await self._finalise(batch, "completed")
            if batch.status == "cancelling" or self._stop == "cancel":
                return await self._finalise(batch, "cancelled")
            if self._stop == "expire":
                return await self._finalise(batch, "expired")
            return batch.status
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._release(batch_id)

    # ------------------------------------------------------------------ lease
    async def _claim(self, batch_id: str) -> bool:
        now = utcnow()
        async with self.db.session() as s:
            result = await s.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status.in_(ACTIVE),
                       or_(Batch.lease_until.is_(None), Batch.lease_until < now, Batch.lease_owner == self.name))
                .values(lease_owner=self.name, lease_until=now + self.lease)
            )
        return result.rowcount == 1

    async def _heartbeat(self, batch_id: str) -> None:
        """Renew the lease; notice cancel and expiry (the API changes the row, the runner acts on it)."""
        while True:
            await asyncio.sleep(max(0.2, self.lease.total_seconds() / 3))
            now = utcnow()
            try:
                async with self.db.session() as s:
                    result = await s.execute(update(Batch).where(Batch.id == batch_id,
                                                                 Batch.lease_owner == self.name)
                                             .values(lease_until=now + self.lease))
                    row = await s.get(Batch, batch_id, populate_existing=True)
            except Exception as exc:  # a database blip: try again next beat (the lease has slack)
                _log.warning("batch lease renewal failed", batch=batch_id, error=type(exc).__name__)
                continue
            if result.rowcount != 1:
                self._stop = "lost"
            elif row is not None and row.status == "cancelling":
                self._stop = self._stop or "cancel"
            elif row is not None and row.expires_at is not None and now >= row.expires_at:
                self._stop = self._stop or "expire"

    async def _release(self, batch_id: str) -> None:
        with contextlib.suppress(Exception):
            async with self.db.session() as s:
                await s.execute(update(Batch).where(Batch.id == batch_id, Batch.lease_owner == self.name)
                                .values(lease_owner=None, lease_until=None))

    async def _load(self, batch_id: str) -> Batch:
        async with self.db.session() as s:
            row = await s.get(Batch, batch_id, populate_existing=True)
        assert row is not None
        return row

    # ------------------------------------------------------------------ validating
    async def _validate(self, batch: Batch, executor: Executor) -> Batch:
        async with self.db.session() as s:
            f = await s.get(BatchFile, batch.input_file_id)
        try:
            if f is None:
                raise StorageError("the input file was deleted")
            await self.keyring.refresh()
            report = await asyncio.to_thread(validate, self.store.lines(f.id, f.chunks), batch.endpoint,
                                             max_lines=self.settings.files_max_lines)
        except StorageError as exc:
            from gateway.batches.lines import Report

            report = Report()
            report.error(None, "input_file_unreadable", str(exc))
        await check_models(report, executor.model_allowed)
        now = utcnow()
        errors = report.as_errors()
        async with self.db.session() as s:
            if errors is not None:
                await s.execute(update(Batch).where(Batch.id == batch.id, Batch.status == "validating")
                                .values(status="failed", errors=errors, failed_at=now))
            else:
                await s.execute(update(Batch).where(Batch.id == batch.id, Batch.status == "validating")
                                .values(status="in_progress", in_progress_at=now, total=report.total))
        tag = Tag.BATCH_FAIL if errors is not None else Tag.BATCH_START
        await self.audit.record(AuditEvent(tag, actor=batch.owner, target=batch.id, decision="allow",
                                           details={"lines": report.total,
                                                    "errors": len(errors["data"]) if errors else 0}))
        return await self._load(batch.id)

    # ------------------------------------------------------------------ lines
    async def _run_lines(self, batch: Batch, executor: Executor) -> None:
        async with self.db.session() as s:
            done = set((await s.execute(select(BatchResult.line_no).where(BatchResult.batch_id == batch.id)))
                       .scalars())
            f = await s.get(BatchFile, batch.input_file_id)
        if f is None:  # deleted after validation: nothing more can run; finish with what is there
            return
        await self.keyring.refresh()
        slots = asyncio.Semaphore(max(1, batch.concurrency))
        running: set[asyncio.Task[None]] = set()
        try:
            for no, raw in iter_lines(self.store.lines(f.id, f.chunks)):
                if no in done:
                    continue
                await slots.acquire()
                if self._stop is not None:
                    slots.release()
                    break
                line = parse_line(raw, no, batch.endpoint)
                task = asyncio.create_task(self._one(batch, executor, line))
                running.add(task)
                task.add_done_callback(lambda t: (running.discard(t), slots.release()))
            while running and self._stop is None:
                await asyncio.wait(set(running), timeout=0.5)
        finally:
            for task in list(running):  # cancelled, expired or lost: unfinished lines stay unanswered
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _one(self, batch: Batch, executor: Executor, line: Line) -> None:
        attempt = 0
        while True:
            request_id = "batchreq_" + secrets.token_hex(12)
            error = None
            try:
                status, body = await executor.infer(line, request_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the entry point answers ApiErrors itself; anything else is ours
                _log.error("batch line crashed", batch=batch.id, line=line.no, error=type(exc).__name__)
                status, body = 500, {}
                error = {"code": "internal_error", "message": "the gateway failed to run this request"}
            if status in RETRYABLE and self._stop is None and attempt < MAX_RETRIES:
                attempt += 1
                await asyncio.sleep(min(self.retry_delay_s * 2 ** min(attempt, 4), 15.0))
                continue
            break
        out = {
            "id": "batch_req_" + secrets.token_hex(12),
            "custom_id": line.custom_id,
            "response": None if error else {"status_code": status, "request_id": request_id, "body": body},
            "error": error,
        }
        await self._save(batch, line.no, status, request_id, out)

    async def _save(self, batch: Batch, line_no: int, status: int, request_id: str, out: dict[str, Any]) -> None:
        blob = self.keyring.encrypt(json.dumps(out, separators=(",", ":")).encode(), table="batch_results",
                                    row=f"{batch.id}:{line_no}", field="line", purpose=PURPOSE)
        ok = status < 400
        try:
            async with self.db.session() as s:
                s.add(BatchResult(batch_id=batch.id, line_no=line_no, status_code=status, request_id=request_id,
                                  line=blob))
                await s.flush()
                counts = {"completed": Batch.completed + 1} if ok else {"failed": Batch.failed + 1}
                await s.execute(update(Batch).where(Batch.id == batch.id).values(**counts))
        except IntegrityError:
            pass  # answered already (two runners overlapped at a lease hand-over): the first answer stands

    # ------------------------------------------------------------------ finalising
    async def _finalise(self, batch: Batch, final: str) -> str:
        now = utcnow()
        if final == "completed":
            async with self.db.session() as s:
                await s.execute(update(Batch).where(Batch.id == batch.id, Batch.status == "in_progress")
                                .values(status="finalizing", finalizing_at=now))
        await self.keyring.refresh()
        out_id, err_id = output_file_id(batch.id, "output"), output_file_id(batch.id, "errors")
        out_w, err_w = self.store.writer(out_id), self.store.writer(err_id)
        try:
            last = -1
            while True:
                async with self.db.session() as s:
                    rows = list((await s.execute(
                        select(BatchResult).where(BatchResult.batch_id == batch.id, BatchResult.line_no > last)
                        .order_by(BatchResult.line_no).limit(RESULTS_PAGE))).scalars())
                for r in rows:
                    data = await self.keyring.adecrypt(r.line, table="batch_results", row=f"{batch.id}:{r.line_no}",
                                                       field="line", purpose=PURPOSE)
                    (out_w if r.status_code < 400 else err_w).write(data + b"\n")
                    last = r.line_no
                if len(rows) < RESULTS_PAGE:
                    break
            out_w.close()
            err_w.close()
        except BaseException:
            out_w.abort()
            err_w.abort()
            raise
        retention = now + timedelta(days=self.settings.files_retention_days)
        values: dict[str, Any] = {"status": final, f"{final}_at": now, "output_file_id": None,
                                  "error_file_id": None, "lease_owner": None, "lease_until": None}
        async with self.db.session() as s:
            await s.execute(delete(BatchFile).where(BatchFile.id.in_((out_id, err_id))))
            for fid, w, kind in ((out_id, out_w, "output"), (err_id, err_w, "errors")):
                if w.bytes == 0:
                    self.store.delete(fid)
                    continue
                s.add(BatchFile(id=fid, owner=batch.owner, filename=f"{batch.id}_{kind}.jsonl",
                                purpose="batch_output", bytes=w.bytes, lines=w.lines, chunks=w.chunks,
                                status="processed", created_at=now, expires_at=retention))
                values["output_file_id" if kind == "output" else "error_file_id"] = fid
            await s.execute(update(Batch).where(Batch.id == batch.id, Batch.status.in_(ACTIVE)).values(**values))
        row = await self._load(batch.id)
        await self.audit.record(AuditEvent(Tag.BATCH_FINISH, actor=batch.owner, target=batch.id, decision="allow",
                                           details={"status": final, "completed": row.completed,
                                                    "failed": row.failed, "total": row.total}))
        return final

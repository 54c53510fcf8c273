"""Files and batches: the rules (ownership, limits, states); routes and the CLI only translate to and from here.

Visibility: every object has an owner (a principal id). A caller sees an object when the policy allows the action
on ``{"owner": <owner>}`` — its own objects by default, every object for administrators. Anything else is
answered exactly like a missing object (404), so one tenant cannot even learn another's ids exist.

Batch states follow OpenAI's: ``validating`` -> ``failed`` | ``in_progress`` -> ``finalizing`` -> ``completed``;
``cancelling`` -> ``cancelled``; ``expired`` after the completion window. The work itself is the runner's
(``runner.py``), started by the Celery task ``palisade.batches.run`` that ``create`` enqueues.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, select, update

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.authz.actions import Action
from gateway.authz.service import Authorization
from gateway.batches.lines import ENDPOINTS
from gateway.batches.shapes import BatchCreate, BatchObject, FileDeleted, FileObject, Page
from gateway.batches.storage import ChunkWriter, FileStore
from gateway.context import RequestContext
from gateway.db.base import utcnow
from gateway.db.batches import Batch, BatchFile
from gateway.errors import BadRequest, NotFound, PayloadTooLarge

_log = structlog.get_logger("palisade.batches")

WINDOWS = {"24h": timedelta(hours=24)}
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("failed", "completed", "expired", "cancelled")
MAX_METADATA = 16


Enqueue = Callable[..., Awaitable[None]]


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class Access:
    """Object-level checks that answer 404 for everything a caller may not see (the denial is audited).

    The route's own check (owner "") is the guard's; this is the second question, about one object."""

    def __init__(self, authz: Authorization, audit: AuditTrail) -> None:
        self.authz = authz
        self.audit = audit

    async def allowed(self, ctx: RequestContext, action: str, owner: str) -> bool:
        decision = await self.authz.decide(ctx, action, {"owner": owner})
        if not decision.allowed:
            await self.audit.record(AuditEvent.of(ctx, Tag.AUTHZ_DENY, target=action, decision=decision.id,
                                                  action=action, rule=decision.rule))
        return decision.allowed

    async def visible(self, ctx: RequestContext, action: str, owner: str, what: str, obj_id: str) -> None:
        if owner != ctx.principal.id and not await self.allowed(ctx, action, owner):
            raise NotFound(f"no such {what}: {obj_id}", code=f"{what}_not_found")


class FileService:
    def __init__(self, *, db: Any, store: FileStore, access: Access, audit: Any, settings: Any) -> None:
        self.db, self.store, self.access, self.audit, self.settings = db, store, access, audit, settings

    def retention(self) -> timedelta:
        return timedelta(days=self.settings.files_retention_days)

    def open_upload(self) -> Upload:
        """A new encrypted file being streamed in; ``commit`` it once the body has ended, or ``abort`` it."""
        return Upload(self.store.writer(new_file_id()), self.settings.files_max_bytes,
                      self.settings.files_max_lines)

    async def commit(self, ctx: RequestContext, upload: Upload, filename: str | None,
                     purpose: str | None) -> FileObject:
        """Check the finished upload and record it as the caller's file (nothing is kept when it fails)."""
        try:
            if purpose != "batch":
                raise BadRequest("purpose must be 'batch'", param="purpose")
            upload.finish()
            w = upload.writer
            name = (filename or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1][:255] or "upload.jsonl"
            now = utcnow()
            row = BatchFile(id=w.file_id, owner=ctx.principal.id, filename=name, purpose=purpose, bytes=w.bytes,
                            lines=w.lines, chunks=w.chunks, status="processed", created_at=now,
                            expires_at=now + self.retention())
            async with self.db.session() as s:
                s.add(row)
            await self.audit.record(AuditEvent.of(ctx, Tag.FILE_CREATE, target=w.file_id, decision="allow",
                                                  bytes=w.bytes, lines=w.lines, purpose=purpose))
        except BaseException:
            upload.abort()
            self.store.delete(upload.writer.file_id)
            raise
        return FileObject.of(row)

    async def _get(self, ctx: RequestContext, file_id: str, action: str) -> BatchFile:
        async with self.db.session() as s:
            row = await s.get(BatchFile, file_id)
        if row is None or row.status != "processed":
            raise NotFound(f"no such file: {file_id}", code="file_not_found")
        await self.access.visible(ctx, action, row.owner, "file", file_id)
        return row

    async def get(self, ctx: RequestContext, file_id: str) -> FileObject:
        return FileObject.of(await self._get(ctx, file_id, Action.FILE_READ))

    async def content(self, ctx: RequestContext, file_id: str) -> AsyncIterator[bytes]:
        row = await self._get(ctx, file_id, Action.FILE_READ)
        await self.store.keyring.refresh()
        return _iterate(self.store.chunks(row.id, row.chunks))

    async def list(self, ctx: RequestContext, *, purpose: str | None = None, after: str | None = None, limit: int = 100,
                   order: str = "desc") -> Page:
        limit = max(1, min(limit, 10_000))
        q = select(BatchFile).where(BatchFile.owner == ctx.principal.id, BatchFile.status == "processed")
        if purpose:
            q = q.where(BatchFile.purpose == purpose)
        rows = await _page(self.db, q, BatchFile, after, limit, order)
        data = [FileObject.of(r) for r in rows[:limit]]
        return Page(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)

    async def delete(self, ctx: RequestContext, file_id: str) -> FileDeleted:
        row = await self._get(ctx, file_id, Action.FILE_DELETE)
        async with self.db.session() as s:
            await s.execute(delete(BatchFile).where(BatchFile.id == row.id))
        self.store.delete(row.id)
        await self.audit.record(AuditEvent.of(ctx, Tag.FILE_DELETE, target=row.id, decision="allow",
                                              owner=row.owner))
        return FileDeleted(id=row.id)

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete files past their retention (disk first, then the row), each one audited."""
        now = now or utcnow()
        async with self.db.session() as s:
            rows = list((await s.execute(select(BatchFile).where(BatchFile.expires_at < now))).scalars())
        for row in rows:
            self.store.delete(row.id)
            async with self.db.session() as s:
                await s.execute(delete(BatchFile).where(BatchFile.id == row.id))
            await self.audit.record(AuditEvent(Tag.FILE_EXPIRE, actor="system:batches", target=row.id,
                                               decision="allow", details={"owner": row.owner}))
        return len(rows)


class Upload:
    """Limits (bytes, lines) enforced while the body streams in: an oversized upload stops at the limit."""

    def __init__(self, writer: ChunkWriter, max_bytes: int, max_lines: int) -> None:
        self.writer, self.max_bytes, self.max_lines = writer, max_bytes, max_lines
        self._done = False

    def write(self, data: bytes) -> None:
        self.writer.write(data)
        if self.writer.bytes > self.max_bytes:
            raise PayloadTooLarge(f"the file is larger than {self.max_bytes} bytes", param="file")
        if self.writer.newlines > self.max_lines:
            raise BadRequest(f"a batch file holds at most {self.max_lines} lines", param="file",
                             code="too_many_lines")

    def finish(self) -> None:
        if self.writer.lines > self.max_lines:
            raise BadRequest(f"a batch file holds at most {self.max_lines} lines", param="file",
                             code="too_many_lines")
        if self.writer.bytes == 0:
            raise BadRequest("the file is empty", param="file")
        self.writer.close()
        self._done = True

    def abort(self) -> None:
        if not self._done:
            self.writer.abort()


class BatchService:
    def __init__(self, *, db: Any, files: FileService, access: Access, audit: Any, settings: Any,
                 enqueue: Enqueue) -> None:
        self.db, self.files, self.access, self.audit, self.settings = db, files, access, audit, settings
        self.enqueue = enqueue

    async def create(self, ctx: RequestContext, body: BatchCreate) -> BatchObject:
        if body.endpoint not in ENDPOINTS:
            raise BadRequest(f"endpoint must be one of {', '.join(sorted(ENDPOINTS))}", param="endpoint")
        window = WINDOWS.get(body.completion_window)
        if window is None:
            raise BadRequest("completion_window must be '24h'", param="completion_window")
        meta = body.metadata
        if meta is not None and (len(meta) > MAX_METADATA or any(len(k) > 64 or len(v) > 512
                                                                  for k, v in meta.items())):
            raise BadRequest("metadata holds at most 16 keys of 64 characters with values of 512",
                             param="metadata")
        f = await self.files._get(ctx, body.input_file_id, Action.FILE_READ)
        if f.purpose != "batch":
            raise BadRequest("input_file_id must be a file uploaded with purpose 'batch'", param="input_file_id")
        now = utcnow()
        row = Batch(id="batch_" + secrets.token_hex(12), owner=ctx.principal.id, endpoint=body.endpoint,
                    input_file_id=f.id,
                    completion_window=body.completion_window, status="validating", meta=meta,
                    concurrency=self.settings.batch_concurrency, created_at=now, expires_at=now + window)
        async with self.db.session() as s:
            s.add(row)
        await self.audit.record(AuditEvent.of(ctx, Tag.BATCH_CREATE, target=row.id, decision="allow",
                                              input_file_id=f.id, endpoint=body.endpoint))
        await self.enqueue("palisade.batches.run", row.id)  # after the commit: the task finds the row
        return BatchObject.of(row)

    async def _get(self, ctx: RequestContext, batch_id: str, action: str) -> Batch:
        async with self.db.session() as s:
            row = await s.get(Batch, batch_id)
        if row is None:
            raise NotFound(f"no such batch: {batch_id}", code="batch_not_found")
        await self.access.visible(ctx, action, row.owner, "batch", batch_id)
        return row

    async def get(self, ctx: RequestContext, batch_id: str) -> BatchObject:
        return BatchObject.of(await self._get(ctx, batch_id, Action.BATCH_READ))

    async def list(self, ctx: RequestContext, *, after: str | None = None, limit: int = 20) -> Page:
        limit = max(1, min(limit, 100))
        q = select(Batch).where(Batch.owner == ctx.principal.id)
        rows = await _page(self.db, q, Batch, after, limit, "desc")
        data = [BatchObject.of(r) for r in rows[:limit]]
        return Page(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)

    async def cancel(self, ctx: RequestContext, batch_id: str) -> BatchObject:
        row = await self._get(ctx, batch_id, Action.BATCH_CANCEL)
        if row.status in ("validating", "in_progress"):
            now = utcnow()
            async with self.db.session() as s:
                await s.execute(update(Batch).where(Batch.id == row.id, Batch.status.in_(("validating",
                                                                                           "in_progress")))
                                .values(status="cancelling", cancelling_at=now))
                row = await s.get(Batch, row.id, populate_existing=True)
            await self.audit.record(AuditEvent.of(ctx, Tag.BATCH_CANCEL, target=row.id, decision="allow"))
            await self.enqueue("palisade.batches.run", row.id)  # a runner (this or a new one) finalises it
        elif row.status not in ("cancelling", "cancelled"):
            raise BadRequest(f"a batch that is {row.status} cannot be cancelled", code="batch_not_cancellable")
        return BatchObject.of(row)


async def _page(db: Any, q: Any, model: Any, after: str | None, limit: int, order: str) -> list[Any]:
    """Rows newest first (or oldest first), after the row ``after`` (OpenAI's cursor), one extra for has_more."""
    desc = order != "asc"
    async with db.session() as s:
        if after:
            pivot = await s.get(model, after)
            if pivot is not None:
                cmp = (model.created_at < pivot.created_at) if desc else (model.created_at > pivot.created_at)
                same = (model.created_at == pivot.created_at) & ((model.id < pivot.id) if desc
                                                                  else (model.id > pivot.id))
                q = q.where(cmp | same)
        q = q.order_by(model.created_at.desc(), model.id.desc()) if desc else q.order_by(model.created_at,
                                                                                          model.id)
        return list((await s.execute(q.limit(limit + 1))).scalars())


async def _iterate(chunks: Any) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk

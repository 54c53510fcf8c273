"""OpenAI's Files and Batch routes, feedback, and the feedback admin routes: thin, typed, one service call each.

``POST /v1/files`` parses the multipart body itself, as it streams: the file part goes chunk by chunk into the
encrypted store (no plaintext temporary file, no whole body in memory), and the size and line limits stop an
oversized upload at the limit rather than after it has been read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.params import Dependency
from litestar.response import Stream
from multipart import MultipartSegment, ParserError, PushMultipartParser

from gateway.api.deps import ContextDep
from gateway.authz.actions import Action
from gateway.batches.feedback import to_jsonl
from gateway.batches.shapes import (
    BatchCreate,
    BatchObject,
    FeedbackCreate,
    FeedbackObject,
    FileDeleted,
    FileObject,
    Page,
)
from gateway.batches.wiring import BatchDomain
from gateway.db.base import utcnow
from gateway.errors import BadRequest

MAX_FIELD = 4096  # a form field other than the file (purpose) is small


BatchesDep = Annotated[BatchDomain, Dependency(skip_validation=True)]


async def _multipart(request: Request, upload: Any) -> tuple[str | None, dict[str, str]]:
    """Feed the ``file`` part into ``upload`` as it arrives; return its filename and the other (small) fields."""
    ctype = request.headers.get("content-type", "")
    boundary = None
    for part in ctype.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not ctype.lower().startswith("multipart/form-data") or not boundary:
        raise BadRequest("send the file as multipart/form-data with fields 'file' and 'purpose'")
    fields: dict[str, str] = {}
    filename: str | None = None
    seen_file = False
    segment: MultipartSegment | None = None
    field_buf = bytearray()
    try:
        with PushMultipartParser(boundary.encode(), max_segment_count=16) as parser:
            async for chunk in request.stream():
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment = event
                        if segment.name == "file":
                            if seen_file:
                                raise BadRequest("send one file per upload", param="file")
                            seen_file, filename = True, segment.filename or "upload.jsonl"
                    elif event:
                        if segment is not None and segment.name == "file":
                            upload.write(bytes(event))
                        else:
                            field_buf += event
                            if len(field_buf) > MAX_FIELD:
                                raise BadRequest("form field too large")
                    elif segment is not None:
                        if segment.name != "file":
                            fields[segment.name] = field_buf.decode("utf-8", "replace")
                        field_buf.clear()
                        segment = None
            parser.parse(b"")
    except ParserError as exc:
        raise BadRequest("malformed multipart/form-data body") from exc
    if not seen_file:
        raise BadRequest("the 'file' field is missing", param="file")
    return filename, fields


async def _stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk


class FilesController(Controller):
    path = "/v1/files"
    tags = ["files"]

    @post("/", opt={"action": Action.FILE_CREATE}, operation_id="createFile", status_code=200,
          request_max_body_size=None)  # the service enforces PALISADE_FILES_MAX_BYTES as the body streams
    async def create(self, request: Request, batches: BatchesDep, ctx: ContextDep) -> FileObject:
        files = batches.files
        upload = files.open_upload()
        try:
            filename, fields = await _multipart(request, upload)
        except BaseException:
            upload.abort()
            raise
        return await files.commit(ctx, upload, filename, fields.get("purpose"))

    @get("/", opt={"action": Action.FILE_READ}, operation_id="listFiles")
    async def list_files(self, batches: BatchesDep, ctx: ContextDep, purpose: str | None = None,
                         after: str | None = None, limit: int = 100, order: str = "desc") -> Page:
        return await batches.files.list(ctx, purpose=purpose, after=after, limit=limit,
                                                order=order)

    @get("/{file_id:str}", opt={"action": Action.FILE_READ}, operation_id="retrieveFile")
    async def retrieve(self, batches: BatchesDep, ctx: ContextDep, file_id: str) -> FileObject:
        return await batches.files.get(ctx, file_id)

    @get("/{file_id:str}/content", opt={"action": Action.FILE_READ}, operation_id="downloadFile")
    async def content(self, batches: BatchesDep, ctx: ContextDep, file_id: str) -> Stream:
        chunks = await batches.files.content(ctx, file_id)
        return Stream(_stream(chunks), media_type="application/octet-stream")

    @delete("/{file_id:str}", opt={"action": Action.FILE_DELETE}, operation_id="deleteFile", status_code=200)
    async def remove(self, batches: BatchesDep, ctx: ContextDep, file_id: str) -> FileDeleted:
        return await batches.files.delete(ctx, file_id)


class BatchesController(Controller):
    path = "/v1/batches"
    tags = ["batches"]

    @post("/", opt={"action": Action.BATCH_CREATE}, operation_id="createBatch", status_code=200)
    async def create(self, batches: BatchesDep, ctx: ContextDep, data: BatchCreate) -> BatchObject:
        return await batches.batches.create(ctx, data)

    @get("/", opt={"action": Action.BATCH_READ}, operation_id="listBatches")
    async def list_batches(self, batches: BatchesDep, ctx: ContextDep, after: str | None = None,
                           limit: int = 20) -> Page:
        return await batches.batches.list(ctx, after=after, limit=limit)

    @get("/{batch_id:str}", opt={"action": Action.BATCH_READ}, operation_id="retrieveBatch")
    async def retrieve(self, batches: BatchesDep, ctx: ContextDep, batch_id: str) -> BatchObject:
        return await batches.batches.get(ctx, batch_id)

    @post("/{batch_id:str}/cancel", opt={"action": Action.BATCH_CANCEL}, operation_id="cancelBatch",
          status_code=200)
    async def cancel(self, batches: BatchesDep, ctx: ContextDep, batch_id: str) -> BatchObject:
        return await batches.batches.cancel(ctx, batch_id)


class FeedbackController(Controller):
    path = "/v1/feedback"
    tags = ["feedback"]

    @post("/", opt={"action": Action.FEEDBACK_CREATE}, operation_id="createFeedback", status_code=200)
    async def create(self, batches: BatchesDep, ctx: ContextDep, data: FeedbackCreate) -> FeedbackObject:
        return await batches.feedback.submit(ctx, data)


class FeedbackAdminController(Controller):
    path = "/admin/feedback"
    tags = ["admin"]

    @get("/rates", opt={"action": Action.FEEDBACK_READ}, operation_id="feedbackRates")
    async def rates(self, batches: BatchesDep, ctx: ContextDep, model: str | None = None, days: int = 30,
                    bucket: str = "day") -> dict[str, Any]:
        if bucket not in ("day", "hour") or not 1 <= days <= 366:
            raise BadRequest("bucket is day or hour; days is 1..366")
        data = await batches.feedback.rates(since=utcnow() - timedelta(days=days), model=model,
                                                   bucket=bucket)
        return {"object": "list", "data": data}

    @get("/export", opt={"action": Action.FEEDBACK_EXPORT}, operation_id="feedbackExport")
    async def export(self, batches: BatchesDep, ctx: ContextDep, model: str | None = None,
                     min_rating: int | None = None, max_rating: int | None = None,
                     corrections_only: bool = False) -> Stream:
        records = await batches.feedback.export(
            actor=ctx.principal.id, min_rating=min_rating, max_rating=max_rating,
            corrections_only=corrections_only, model=model)
        return Stream(iter(list(to_jsonl(records))), media_type="application/jsonl")


ROUTES = [FilesController, BatchesController, FeedbackController, FeedbackAdminController]

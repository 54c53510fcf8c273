"""OpenAI's JSON shapes for files and batches (what ``openai``'s ``FileObject`` and ``Batch`` parse), as Structs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from gateway.db.batches import Batch, BatchFile


def epoch(t: datetime | None) -> int | None:
    return int(t.timestamp()) if t is not None else None


class FileObject(msgspec.Struct):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int | None = None
    status_details: str | None = None
    object: Literal["file"] = "file"

    @classmethod
    def of(cls, f: BatchFile) -> FileObject:
        return cls(id=f.id, bytes=f.bytes, created_at=epoch(f.created_at) or 0, filename=f.filename,
                   purpose=f.purpose, status=f.status, expires_at=epoch(f.expires_at))


class FileDeleted(msgspec.Struct):
    id: str
    deleted: bool = True
    object: Literal["file"] = "file"


class RequestCounts(msgspec.Struct):
    total: int
    completed: int
    failed: int


class BatchObject(msgspec.Struct):
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    request_counts: RequestCounts
    errors: dict[str, Any] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    metadata: dict[str, str] | None = None
    object: Literal["batch"] = "batch"

    @classmethod
    def of(cls, b: Batch) -> BatchObject:
        return cls(
            id=b.id, endpoint=b.endpoint, input_file_id=b.input_file_id, completion_window=b.completion_window,
            status=b.status, created_at=epoch(b.created_at) or 0,
            request_counts=RequestCounts(total=b.total, completed=b.completed, failed=b.failed),
            errors=b.errors, output_file_id=b.output_file_id, error_file_id=b.error_file_id,
            in_progress_at=epoch(b.in_progress_at), expires_at=epoch(b.expires_at),
            finalizing_at=epoch(b.finalizing_at), completed_at=epoch(b.completed_at), failed_at=epoch(b.failed_at),
            expired_at=epoch(b.expired_at), cancelling_at=epoch(b.cancelling_at), cancelled_at=epoch(b.cancelled_at),
            metadata=b.meta,
        )


class Page(msgspec.Struct):
    """OpenAI's cursor page: ``after=<last_id>`` fetches the next one."""

    data: list[Any]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    object: Literal["list"] = "list"


Metadata = dict[str, str]


class BatchCreate(msgspec.Struct, forbid_unknown_fields=True):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: Metadata | None = None


class FeedbackCreate(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str
    rating: int | str
    comment: str | None = None
    correction: str | None = None


class FeedbackObject(msgspec.Struct):
    id: str
    request_id: str
    rating: str
    score: float
    model: str
    model_version: str | None
    created_at: int
    updated_at: int
    object: Literal["feedback"] = "feedback"

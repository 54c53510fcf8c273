"""Tables of the batch domain (gateway/batches/): uploaded files, batches, per-line results, and feedback on answers.

Contents never sit in these rows in clear: file bodies live encrypted on disk (``storage.py``), a line's result and
a feedback's comment, correction and prompt/answer are keyring blobs bound to their row. What stays in clear is
what the API lists and filters on (owner, status, counts, times).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, new_id, utcnow


class BatchFile(Base):
    """An uploaded file (``purpose=batch``) or one a batch wrote (``batch_output``); OpenAI's file object."""

    __tablename__ = "batch_files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "file-<hex>"
    owner: Mapped[str] = mapped_column(String(200), index=True)  # principal id
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    #: number of encrypted chunks on disk; a file cut short on disk is detected by a missing chunk
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    #: "uploaded" while being written, "processed" once complete
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: retention: the sweep deletes the file (disk and row) after this
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Batch(Base):
    """One batch: OpenAI's batch object, plus the worker lease. Lines run as ``owner`` as it stands when they run
    (a revoked or disabled owner's batch stops)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "batch_<hex>"
    owner: Mapped[str] = mapped_column(String(200), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8), default="24h")
    status: Mapped[str] = mapped_column(String(16), default="validating", index=True)
    meta: Mapped[dict | None] = mapped_column(default=None)  # OpenAI's "metadata"
    #: validation errors, OpenAI's shape: {"object": "list", "data": [{code, message, param, line}]}
    errors: Mapped[dict | None] = mapped_column(default=None)
    output_file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    error_file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    concurrency: Mapped[int] = mapped_column(Integer, default=8)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    finalizing_at: Mapped[datetime | None] = mapped_column(default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    failed_at: Mapped[datetime | None] = mapped_column(default=None)
    expired_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelling_at: Mapped[datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[datetime | None] = mapped_column(default=None)
    #: worker lease: the runner holding the batch renews ``lease_until``; a killed worker's lease runs out and
    #: the next runner takes over (finished lines are in ``batch_results`` and are not run again)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)


class BatchResult(Base):
    """A finished line's output line (encrypted). Unique per (batch, line): a line is answered once. Line numbers
    stand for custom ids, which validation made unique in the (immutable) input file."""

    __tablename__ = "batch_results"
    __table_args__ = (UniqueConstraint("batch_id", "line_no"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(String(40), index=True)
    line_no: Mapped[int] = mapped_column(Integer)  # the custom_id itself is the caller's data: only in ``line``
    status_code: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str] = mapped_column(String(64))
    #: the output line ({id, custom_id, response, error}) as JSON, AES-GCM under purpose "batches"
    line: Mapped[bytes] = mapped_column(LargeBinary)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feedback(Base):
    """A rating of one answer, by the principal that asked for it; one row per (request id, principal)."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("request_id", "actor"),
        Index("ix_feedback_model_created", "model", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128))
    #: the principal whose request this was (from the audit trail), and who rated it (the same, or its owner)
    actor: Mapped[str] = mapped_column(String(200))
    rater: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128), default=None)
    #: as given: "up", "down" or "1".."5"; ``score`` maps it to 0..1 (down 0, up 1, n -> (n-1)/4)
    rating: Mapped[str] = mapped_column(String(8))
    score: Mapped[float] = mapped_column(Float)
    comment: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)  # encrypted
    correction: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)  # encrypted
    #: the retained prompt and answer ({prompt, messages, completion}), re-encrypted for this row
    content: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updates: Mapped[int] = mapped_column(Integer, default=0)

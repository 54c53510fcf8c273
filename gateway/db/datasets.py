"""Tables for governed datasets: a dataset (a name), its versions (one pipeline run each) and approvals.

A version is the record of processing (GDPR art. 30 style): owner, purpose, classification, legal basis, source,
licence, retention, parent version, pipeline config, code version, and what every stage did. Its
``content_digest`` (sha256 over the manifest of encrypted shards) is what an approval is bound to: a new version,
or changed shards, needs a new approval. Nothing here holds dataset content: shards live encrypted in the
dataset store, and the card holds counts only.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin, utcnow

STATUSES = ("processing", "ready", "failed", "approved", "rejected")
CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")


class Dataset(IdMixin, Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    #: principal id of whoever registered the first version
    owner: Mapped[str] = mapped_column(String(200), index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class DatasetVersion(IdMixin, Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "number"),)

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="processing", index=True)
    #: the registrant (principal id): owner of the version, never its approver
    owner: Mapped[str] = mapped_column(String(200), index=True)
    purpose: Mapped[str] = mapped_column(Text, default="")
    classification: Mapped[str] = mapped_column(String(32), default="internal")
    legal_basis: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(Text, default="")
    licence: Mapped[str] = mapped_column(String(200), default="")
    retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_versions.id"), default=None)
    pipeline_config: Mapped[dict] = mapped_column(default=dict)
    code_version: Mapped[str | None] = mapped_column(String(64), default=None)
    content_digest: Mapped[str | None] = mapped_column(String(80), default=None, index=True)
    records_in: Mapped[int] = mapped_column(Integer, default=0)
    records_out: Mapped[int] = mapped_column(Integer, default=0)
    stages: Mapped[list] = mapped_column(default=list)
    pii: Mapped[dict] = mapped_column(default=dict)
    card: Mapped[dict] = mapped_column(default=dict)
    #: the shard list (names, sha256 of ciphertexts, record counts); no content
    manifest: Mapped[dict] = mapped_column(default=dict)
    #: {"stage": ..., "done": ...} while processing
    progress: Mapped[dict] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    bias_flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the encrypted upload awaiting processing (removed when the job ends), or the import folder
    input_ref: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class DatasetApproval(IdMixin, Base):
    __tablename__ = "dataset_approvals"

    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    approver: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected
    #: the content digest the decision was made on
    digest: Mapped[str] = mapped_column(String(80))
    reason: Mapped[str] = mapped_column(Text, default="")
    #: the approver waived a flagged bias report
    bias_waived: Mapped[bool] = mapped_column(Boolean, default=False)

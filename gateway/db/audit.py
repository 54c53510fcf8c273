"""The audit trail's tables: append-only records (hash chain), signed checkpoints, signing keys, the head row.

On Postgres a trigger (migration 0002) refuses UPDATE, DELETE and TRUNCATE on the records and checkpoints for
every role, and the application role is granted only SELECT and INSERT there; pruning runs as the table owner.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, utcnow


class AuditRecord(Base):
    __tablename__ = "audit_records"
    #: search and export filter by one column and a time range, newest first: each (column, at, seq) index turns
    #: a page of any filter into one range scan (migration 0009); their leading columns serve plain lookups too
    __table_args__ = (
        Index("ix_audit_records_at_seq", "at", "seq"),
        *(Index(f"ix_audit_records_{c}_at_seq", c, "at", "seq") for c in ("actor", "tag", "model", "decision")),
    )

    #: position in the chain, 1, 2, ... (assigned under the head lock, never reused)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column()
    #: ``source:subject:action``
    tag: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str | None] = mapped_column(String(200))
    target: Mapped[str | None] = mapped_column(String(200))
    #: the model alias an inference event is about (export filter)
    model: Mapped[str | None] = mapped_column(String(128))
    decision: Mapped[str | None] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)  # feedback finds its request
    #: canonical JSON text, hashed exactly as stored
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    #: SHA-256 (hex) of the record's canonical form, which includes ``prev_hash``
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: the chain head this checkpoint vouches for
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    #: "periodic" (every N records or T seconds) or "anchor" (start of the trail after pruning)
    kind: Mapped[str] = mapped_column(String(16), default="periodic")
    key_id: Mapped[str] = mapped_column(String(64))
    #: base64 Ed25519 signature over the checkpoint's canonical form
    signature: Mapped[str] = mapped_column(String(128))


class AuditSigningKey(Base):
    __tablename__ = "audit_signing_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)  # PEM
    #: the Ed25519 private key (raw), encrypted by the keyring (purpose "signing")
    private_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    active: Mapped[bool] = mapped_column(default=True)


class AuditHead(Base):
    """One row (id 1): the chain's last seq and hash. Locked FOR UPDATE by each append batch, which serialises
    appends from every gateway process into one chain; verification never trusts it."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))

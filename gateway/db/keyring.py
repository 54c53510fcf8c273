"""Data keys of the keyring: one row per (purpose, version), stored only wrapped by the key-encryption key."""

from __future__ import annotations

from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin


class DataKey(IdMixin, Base):
    __tablename__ = "data_keys"
    __table_args__ = (UniqueConstraint("purpose", "version"),)

    #: what the key protects ("totp", "signing", "prompts", "datasets", "audit-hmac", ...)
    purpose: Mapped[str] = mapped_column(String(64))
    #: 1, 2, ... per purpose; the highest is used for new encryptions, every version stays readable
    version: Mapped[int] = mapped_column(Integer)
    #: which key-encryption key wrapped it (``local:<fingerprint>`` or a cloud KMS key id)
    kek_id: Mapped[str] = mapped_column(String(200))
    #: the 32-byte data key, encrypted by the KEK (never stored in clear)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)

"""API keys: stored only as a hash, identified by a public prefix."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin


class ApiKey(IdMixin, Base):
    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(200))
    #: public, shown in listings and logs: "pal_" + 12 hex chars; the lookup key
    prefix: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    #: SHA-256 of the whole key (keys carry 256 bits of entropy, so a fast hash is sound)
    key_hash: Mapped[str] = mapped_column(String(64))
    #: the principal this key acts for (an app client or a user); None = a standalone app key
    owner_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    #: model aliases the key may call; empty list = every model its policy allows
    models: Mapped[list] = mapped_column(default=list)
    #: attributes for ABAC (department, clearance, roles ...)
    attributes: Mapped[dict] = mapped_column(default=dict)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)

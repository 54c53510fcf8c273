"""Model aliases and the endpoints that serve them (seeded from PALISADE_MODELS_FILE at start)."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin


class ModelAlias(IdMixin, Base):
    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    backend: Mapped[str] = mapped_column(String(32))
    #: the models-file entry (urls, upstream model, caps); never secrets (those are named by env var)
    spec: Mapped[dict] = mapped_column(default=dict)
    classification: Mapped[str] = mapped_column(String(32), default="internal")
    owner: Mapped[str | None] = mapped_column(String(128), default=None)
    enabled: Mapped[bool] = mapped_column(default=True)

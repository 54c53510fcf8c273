"""Authorization and limits state: versioned ABAC policy, admin-set limits, runtime options, usage baselines."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, IdMixin, utcnow


class PolicyVersion(IdMixin, Base):
    """One version of the whole policy document; never updated, a change or rollback adds a version."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    #: unified diff from the previous version (empty for the first)
    diff: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(1000))
    #: set when this version restores an older one
    restored_from: Mapped[int | None] = mapped_column(Integer, default=None)


class LimitRule(IdMixin, Base):
    """Admin-set limits for one scope: ``principal`` (id or ``*`` = every principal's default),
    ``department`` or ``model``. A null field falls back to the next level (principal default, then settings);
    0 means unlimited at this scope."""

    __tablename__ = "limit_rules"
    __table_args__ = (UniqueConstraint("scope", "subject"),)

    scope: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(200))
    requests_per_min: Mapped[int | None] = mapped_column(Integer, default=None)
    tokens_per_min: Mapped[int | None] = mapped_column(Integer, default=None)
    concurrency: Mapped[int | None] = mapped_column(Integer, default=None)
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: load shedding: lower numbers are refused first when backends are saturated (0 low, 1 normal, 2 high)
    priority: Mapped[int | None] = mapped_column(Integer, default=None)
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RuntimeOption(Base):
    """Admin-set switches read by every replica (``limits.fail_open``, ``anomaly.suspend`` ...)."""

    __tablename__ = "runtime_options"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict] = mapped_column(default=dict)
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageBaseline(Base):
    """Per-principal usage baseline (exponentially weighted, per active minute) and suspension state."""

    __tablename__ = "usage_baselines"

    principal_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests_per_min: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_per_min: Mapped[float] = mapped_column(Float, default=0.0)
    denials_per_min: Mapped[float] = mapped_column(Float, default=0.0)
    offhours_share: Mapped[float] = mapped_column(Float, default=0.0)
    minutes: Mapped[int] = mapped_column(Integer, default=0)
    suspended_at: Mapped[datetime | None] = mapped_column(default=None)
    suspended_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    @classmethod
    def fresh(cls, principal_id: str) -> UsageBaseline:
        """A new baseline with its counters set now (column defaults only apply at flush)."""
        return cls(principal_id=principal_id, requests_per_min=0.0, tokens_per_min=0.0, denials_per_min=0.0,
                   offhours_share=0.0, minutes=0)

"""Change counters: one row per replicated domain (``policy``, ``limits``, ``models``), bumped in the same
transaction as every write to that domain's tables. A replica's periodic check reads these few rows (one cheap
statement) and re-reads a domain's tables only when its counter moved (:class:`gateway.changes.ChangeFeed`)."""

from __future__ import annotations

from sqlalchemy import BigInteger, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base
from gateway.db.session import Database

#: the domains with a counter; a migration seeds one row each
DOMAINS = ("policy", "limits", "models")


class ChangeVersion(Base):
    """How many committed changes a domain has seen; only ever incremented (compare for inequality)."""

    __tablename__ = "change_versions"

    domain: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


async def bump_version(s: AsyncSession, domain: str) -> None:
    """Count one change of ``domain`` in the caller's transaction.

    Call it as the last statement before the commit: on Postgres the row stays locked until then, and a writer
    that takes it last never holds it while it waits for another lock.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown change domain {domain!r}")
    q = update(ChangeVersion).where(ChangeVersion.domain == domain).values(version=ChangeVersion.version + 1)
    if (await s.execute(q)).rowcount == 0:  # a database the seeding migration did not reach
        s.add(ChangeVersion(domain=domain, version=1))
        await s.flush()


async def read_versions(db: Database) -> dict[str, int]:
    """Every domain's counter, in one statement outside the ORM (the poll's whole cost when nothing changed)."""
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(ChangeVersion.domain, ChangeVersion.version))).all()
    return {d: int(v) for d, v in rows}

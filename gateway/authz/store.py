"""The versioned policy store: every change is a new version with who, when, why and a diff; rollback restores
an older version's text as a new version. Validation happens here, so nothing unparseable is ever stored."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gateway.authz.document import digest, parse, unified_diff
from gateway.authz.enforcer import DEFAULT_POLICY_PATH
from gateway.db.changes import bump_version
from gateway.db.policy import PolicyVersion
from gateway.db.session import Database
from gateway.errors import Conflict, NotFound

MAX_POLICY_BYTES = 2_000_000


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def latest_version(self) -> int:
        async with self.db.session() as s:
            return int((await s.execute(select(func.max(PolicyVersion.version)))).scalar() or 0)

    async def current(self) -> PolicyVersion | None:
        async with self.db.session() as s:
            q = select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1)
            return (await s.execute(q)).scalar_one_or_none()

    async def get(self, version: int) -> PolicyVersion:
        async with self.db.session() as s:
            row = (
                await s.execute(select(PolicyVersion).where(PolicyVersion.version == version))
            ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"policy version {version} does not exist")
        return row

    async def history(self, limit: int = 50) -> list[PolicyVersion]:
        async with self.db.session() as s:
            q = select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(limit)
            return list((await s.execute(q)).scalars())

    async def apply(
        self, text: str, *, actor: str, reason: str, restored_from: int | None = None
    ) -> PolicyVersion:
        """Store ``text`` as the next version. Raises PolicyError (bad document) or Conflict (no change / race)."""
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise Conflict(f"policy larger than {MAX_POLICY_BYTES} bytes")
        reason = reason.strip()
        if not reason:
            raise Conflict("a policy change needs a reason")
        parse(text)  # raises PolicyError naming the line
        async with self.db.session() as s:
            q = select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1)
            cur = (await s.execute(q)).scalar_one_or_none()
            if cur is not None and cur.text == text:
                raise Conflict(f"the policy is already this text (version {cur.version})")
            row = PolicyVersion(
                version=(cur.version if cur else 0) + 1,
                text=text,
                sha256=digest(text),
                diff=unified_diff(
                    cur.text if cur else "",
                    text,
                    f"v{cur.version if cur else 0}",
                    f"v{(cur.version if cur else 0) + 1}",
                ),
                actor=actor[:200],
                reason=reason[:1000],
                restored_from=restored_from,
            )
            s.add(row)
            try:
                await s.flush()
            except IntegrityError:
                raise Conflict("another policy change was stored at the same time; retry") from None
            await bump_version(s, "policy")  # what every replica's periodic check reads
        return row

    async def rollback(self, version: int, *, actor: str, reason: str) -> PolicyVersion:
        old = await self.get(version)
        return await self.apply(
            old.text, actor=actor, reason=f"rollback to v{version}: {reason}".strip(), restored_from=version
        )

    async def seed_default(self) -> PolicyVersion | None:
        """First start: store policies/policy.csv as version 1 (a concurrent replica may win; that is fine)."""
        if await self.latest_version() > 0:
            return None
        try:
            return await self.apply(
                DEFAULT_POLICY_PATH.read_text(),
                actor="system",
                reason="default policy (policies/policy.csv) at first start",
            )
        except Conflict:
            return None

"""API keys: shown once, stored as SHA-256, prefix-identifiable, scoped, expiring, revocable.

Format: ``pal_<12 hex key id>_<43 url-safe chars>``. The ``pal_`` prefix lets secret scanners spot leaked keys;
the id part is the lookup key, so verification is one indexed read plus a constant-time compare.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from gateway.authn.principal import Principal
from gateway.authn.revocation import CredentialCache
from gateway.db.base import utcnow
from gateway.db.keys import ApiKey
from gateway.db.session import Database

KEY_RE = re.compile(r"^pal_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: str
    prefix: str
    key: str  # the only time the whole key exists outside the caller's hands


class ApiKeyService:
    def __init__(self, db: Database, cache: CredentialCache | None = None) -> None:
        self.db = db
        #: verified-key cache; revocations empty it on every replica (None: the CLI, which verifies nothing)
        self.cache = cache
        self._touched: dict[str, float] = {}

    async def create(
        self,
        name: str,
        *,
        models: list[str] | None = None,
        owner_id: str | None = None,
        attributes: dict | None = None,
        expires_at: datetime | None = None,
    ) -> NewKey:
        if not name or len(name) > 200:
            raise ValueError("key name must be 1..200 characters")
        prefix = "pal_" + secrets.token_hex(6)
        key = f"{prefix}_{secrets.token_urlsafe(32)}"
        row = ApiKey(
            name=name, prefix=prefix, key_hash=hash_key(key), owner_id=owner_id, models=list(models or []),
            attributes=dict(attributes or {}), expires_at=expires_at,
        )
        async with self.db.session() as s:
            s.add(row)
        return NewKey(id=row.id, prefix=prefix, key=key)

    async def verify(self, key: str) -> Principal | None:
        """The principal for a valid, unexpired, unrevoked key; None otherwise (no reason leaks out)."""
        m = KEY_RE.match(key)
        if m is None:
            return None
        prefix = "pal_" + m.group(1)
        cached = self.cache.get(prefix) if self.cache is not None else None
        if cached is not None:
            principal, expires_at = cached.value
            if hmac.compare_digest(cached.key_hash, hash_key(key)) and (expires_at is None or expires_at > utcnow()):
                await self._touch_if_due(principal.key_id)
                return principal
            return None
        generation = self.cache.generation if self.cache is not None else 0
        async with self.db.session() as s:
            row = (await s.execute(select(ApiKey).where(ApiKey.prefix == prefix))).scalar_one_or_none()
            if row is None or not hmac.compare_digest(row.key_hash, hash_key(key)):
                return None
            now = utcnow()
            if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
                return None
            # last-used at one-minute resolution: no write per request on the hot path
            if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
                await s.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        principal = key_principal(row)
        if self.cache is not None:
            self.cache.put(prefix, row.key_hash, (principal, row.expires_at), row.id, generation=generation)
        return principal

    async def _touch_if_due(self, key_id: str | None) -> None:
        """last-used at one-minute resolution for cached keys too (one write per key per minute per process)."""
        now = time.monotonic()
        if key_id is None or now - self._touched.get(key_id, 0.0) < 60:
            return
        self._touched[key_id] = now
        async with self.db.session() as s:
            await s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))

    async def revoke(self, key_id_or_prefix: str) -> bool:
        async with self.db.session() as s:
            res = await s.execute(
                update(ApiKey)
                .where((ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix))
                .where(ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            done = res.rowcount > 0
        if done:
            # every process's verified-key cache drops it before its next request
            from gateway.authn.revocation import announce_revocation

            if self.cache is not None:
                self.cache.evict(key_id_or_prefix)
            await announce_revocation(self.db.settings, key_id_or_prefix)
        return done

    async def list(self) -> list[ApiKey]:
        async with self.db.session() as s:
            return list((await s.execute(select(ApiKey).order_by(ApiKey.created_at))).scalars())


def key_principal(row: ApiKey) -> Principal:
    attrs = dict(row.attributes or {})
    return Principal(
        id=f"key:{row.id}", kind="app", name=row.name, auth_method="api_key",
        roles=tuple(attrs.pop("roles", ("app",))), attributes=attrs, models=tuple(row.models or ()),
        key_id=row.id,
    )

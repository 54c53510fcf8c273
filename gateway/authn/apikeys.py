"""API keys: shown once, stored as SHA-256, prefix-identifiable, scoped, expiring, revocable.

Format: ``pal_<12 hex key id>_<43 url-safe chars>``. The ``pal_`` prefix lets secret scanners spot leaked keys;
the id part is the lookup key, so verification is one indexed read plus a constant-time compare.
"""

from __future__ import annotations

import asyncio
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


@dataclass(frozen=True, slots=True)
class _Found:
    """A usable key's row, as one database read saw it (the caller still compares its own key's hash)."""

    key_hash: str
    principal: Principal
    expires_at: datetime | None
    key_id: str
    touch_due: bool


class ApiKeyService:
    def __init__(self, db: Database, cache: CredentialCache | None = None) -> None:
        self.db = db
        #: verified-key cache; revocations empty it on every replica (None: the CLI, which verifies nothing)
        self.cache = cache
        self._touched: dict[str, float] = {}
        self._inflight: dict[tuple[str, int], asyncio.Future[_Found | None]] = {}

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
        found = await self._lookup_once(prefix, generation)
        if found is None or not hmac.compare_digest(found.key_hash, hash_key(key)):
            return None
        if found.touch_due:  # last-used at one-minute resolution: no write per request on the hot path
            await self._touch_if_due(found.key_id)
        if self.cache is not None:
            self.cache.put(prefix, found.key_hash, (found.principal, found.expires_at), found.key_id,
                           generation=generation)
        return found.principal

    async def _lookup_once(self, prefix: str, generation: int) -> _Found | None:
        """One database read per key prefix at a time: requests that miss the cache together (a burst when an
        entry expires under load) share it instead of queueing one read each. Only requests of the same cache
        generation share a read, so one that starts after a revocation never gets an answer read before it."""
        flight = (prefix, generation)
        task = self._inflight.get(flight)
        if task is None:
            task = asyncio.ensure_future(self._lookup(prefix))
            self._inflight[flight] = task
            task.add_done_callback(lambda t: self._landed(flight, t))
        return await asyncio.shield(task)  # one caller going away does not cancel the others' read

    def _landed(self, flight: tuple[str, int], task: asyncio.Future[_Found | None]) -> None:
        self._inflight.pop(flight, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone (their own error still raises)

    async def _lookup(self, prefix: str) -> _Found | None:
        async with self.db.session() as s:
            row = (await s.execute(select(ApiKey).where(ApiKey.prefix == prefix))).scalar_one_or_none()
            if row is None:
                return None
            now = utcnow()
            if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
                return None
            touch_due = row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60
            return _Found(row.key_hash, key_principal(row), row.expires_at, row.id, touch_due)

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

"""A verified-credential cache that revocation empties on every replica at once.

API key checks are cached per process (the gateway's overhead budget is ~1 ms), so a revocation must reach every
process's cache before its next request:
- with Redis (N replicas): a revocation is published on ``CHANNEL``; each process subscribes and evicts. While the
  subscription is down the cache is not used at all (every check goes to the database), and entries also expire
  after ``TTL_S`` in case a message is lost.
- without Redis (embedded, one machine): a revocation rewrites the marker file ``<data dir>/revocations``; each
  cache lookup compares the file's mtime (one ``stat``) and empties itself when it changed.
``announce_revocation`` is what every revoking path calls (API, CLI), so the CLI needs no running gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.settings import Settings

_log = structlog.get_logger("palisade.authn.revocation")

CHANNEL = "palisade:authn:revocations"
TTL_S = 5.0
MAX_ENTRIES = 50_000


def marker_path(settings: Settings) -> Path:
    return settings.data_dir / "revocations"


async def announce_revocation(settings: Settings, ident: str, redis: Any = None) -> None:
    """Tell every process that the credential ``ident`` (key id or prefix) is revoked."""
    path = marker_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{secrets.token_hex(4)}")
    tmp.write_text(secrets.token_hex(8))
    os.replace(tmp, path)  # atomic: readers see the old or the new file, and a new mtime
    if settings.redis_url:
        own = redis is None
        if own:
            import redis.asyncio as aioredis

            redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            await redis.publish(CHANNEL, ident)
        finally:
            if own:
                await redis.aclose()


@dataclass(slots=True)
class _Entry:
    stored_at: float
    key_hash: str
    value: Any
    ident: tuple[str, ...]


class CredentialCache:
    def __init__(self, settings: Settings, redis_url: str | None = None) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self._entries: dict[str, _Entry] = {}
        #: bumped by every eviction: a database read that began before a revocation must not be cached after it
        self.generation = 0
        self._marker = marker_path(settings)
        self._marker_mtime = self._mtime()
        self._subscribed = redis_url is None  # embedded mode relies on the marker file alone
        self._task: asyncio.Task[None] | None = None

    def _mtime(self) -> tuple[int, int]:
        try:
            st = os.stat(self._marker)
        except FileNotFoundError:
            return (0, 0)
        # the inode too: each announcement os.replace()s in a new file, so two announcements within one
        # filesystem timestamp tick (milliseconds) still look different
        return (st.st_ino, st.st_mtime_ns)

    def usable(self) -> bool:
        if not self._subscribed:
            return False
        mtime = self._mtime()
        if mtime != self._marker_mtime:
            self._marker_mtime = mtime
            self._clear()
        return True

    def get(self, lookup: str) -> _Entry | None:
        if not self.usable():
            return None
        entry = self._entries.get(lookup)
        if entry is not None and time.monotonic() - entry.stored_at > TTL_S:
            self._entries.pop(lookup, None)
            return None
        return entry

    def put(self, lookup: str, key_hash: str, value: Any, *ident: str, generation: int | None = None) -> None:
        """Cache a verified credential; ``generation`` is :attr:`generation` read before the database read, so a
        revocation that arrived in between wins."""
        if not self.usable() or (generation is not None and generation != self.generation):
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[lookup] = _Entry(time.monotonic(), key_hash, value, (lookup, *ident))

    def _clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def evict(self, ident: str) -> None:
        self.generation += 1
        for lookup, entry in list(self._entries.items()):
            if ident in entry.ident:
                self._entries.pop(lookup, None)

    async def start(self) -> None:
        if self.redis_url and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="credential-revocations")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        import redis.asyncio as aioredis

        while True:
            client = aioredis.from_url(self.redis_url, socket_connect_timeout=2, health_check_interval=5)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._clear()  # anything cached while unsubscribed may be stale
                    self._subscribed = True
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            self.evict(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("revocation channel lost; cache off until it is back", error=type(exc).__name__)
            finally:
                self._subscribed = False
                self._clear()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(1.0)

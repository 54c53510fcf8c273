"""Replicas converge: a change publishes an event on Redis, and every replica also re-checks the store's versions
on a short period, so a change lands within ``interval_s`` even when pub/sub messages were lost (Redis outage).

The periodic check reads one small table of change counters (:mod:`gateway.db.changes`: one row per domain,
bumped in the same transaction as every write to that domain's tables) and runs a domain's watcher, which
re-reads its tables, only when that counter moved: an idle replica costs one single-statement read per tick,
not a re-read of the policy, limits and registry tables. A full re-read of every domain still runs every
``resync_s`` as a backstop against a write that bypassed the counters (a hand-made SQL change).

Each watcher is a coroutine that reads the store and reloads what changed; a watcher that fails (database down)
is retried on the next tick, and the policy decision point turns stale (503) if it cannot check for too long:
``checked`` (given to :meth:`ChangeFeed.watch`) is told each time a domain was found current.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

_log = structlog.get_logger("palisade.sync")
CHANNEL = "palisade:config-changes"

Watcher = Callable[[], Awaitable[None]]
#: reads every domain's change counter (``{"policy": 7, "limits": 3, ...}``); raises when the store is down
Versions = Callable[[], Awaitable[dict[str, int]]]


class ChangeFeed:
    def __init__(self, redis: Any, interval_s: float = 1.0, *, versions: Versions | None = None,
                 resync_s: float = 300.0) -> None:
        self.redis = redis
        self.interval_s = interval_s
        #: without counters every tick re-reads every domain
        self.versions = versions
        self.resync_s = resync_s
        self.watchers: dict[str, Watcher] = {}
        self._checked: dict[str, Callable[[float], None]] = {}
        self._seen: dict[str, int] = {}  # the counter each domain's last successful refresh started from
        self._synced_at: float | None = None  # when every domain was last re-read
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()

    def watch(self, name: str, refresh: Watcher, *, checked: Callable[[float], None] | None = None) -> None:
        """``refresh`` re-reads domain ``name``; ``checked(monotonic start)`` runs whenever the domain is known
        current (refreshed, or its counter unchanged)."""
        self.watchers[name] = refresh
        if checked is not None:
            self._checked[name] = checked

    async def refresh(self, names: list[str] | None = None) -> None:
        """Re-read ``names`` (default: every domain) whatever the counters say."""
        for name in names or list(self.watchers):
            await self._run(name)

    async def _run(self, name: str) -> bool:
        try:
            await self.watchers[name]()
            return True
        except Exception as exc:  # the next tick retries; the authorizer goes stale if this persists
            _log.warning("config refresh failed", watcher=name, error=type(exc).__name__)
            return False

    async def check(self) -> None:
        """One periodic check: read the counters, re-read only the domains whose counter moved."""
        started = time.monotonic()
        if self.versions is None:
            await self.refresh()
            return
        try:
            current = await self.versions()
        except Exception as exc:  # store down: nothing is known current, the authorizer may turn stale
            _log.warning("change counters unreadable", error=type(exc).__name__)
            return
        full = self._synced_at is None or started - self._synced_at >= self.resync_s
        all_ok = True
        for name in list(self.watchers):
            version = current.get(name)  # None: no counter for this domain, so it is re-read every tick
            if full or version is None or self._seen.get(name) != version:
                if not await self._run(name):
                    all_ok = False
                    continue
                if version is not None:
                    self._seen[name] = version
            checked = self._checked.get(name)
            if checked is not None:
                checked(started)
        if full and all_ok:
            self._synced_at = started

    async def start(self) -> None:
        await self.check()  # the first check re-reads everything (nothing seen yet)
        self._tasks.append(asyncio.create_task(self._poll(), name="config-poll"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="config-listen"))

    async def publish(self, name: str) -> None:
        """Tell every replica (this one included) that ``name`` changed; a lost message is caught by polling.

        The writer bumped the domain's counter in its transaction, so the check this wakes sees it moved."""
        self._wake.set()
        if self.redis is None:
            return
        try:
            await self.redis.publish(CHANNEL, name)
        except Exception as exc:
            _log.warning("change event not published; replicas will poll", error=type(exc).__name__)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await self.check()

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.debug("change listener reconnecting", error=type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()

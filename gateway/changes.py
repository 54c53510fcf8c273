"""Replicas converge: a change publishes an event on Redis, and every replica also re-checks the store's versions
on a short period, so a change lands within ``interval_s`` even when pub/sub messages were lost (Redis outage).

Each watcher is a coroutine that reads the store and reloads what changed; a watcher that fails (database down)
is retried on the next tick, and the policy decision point turns stale (503) if it cannot check for too long.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

_log = structlog.get_logger("palisade.sync")
CHANNEL = "palisade:config-changes"

Watcher = Callable[[], Awaitable[None]]


class ChangeFeed:
    def __init__(self, redis: Any, interval_s: float = 1.0) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self.watchers: dict[str, Watcher] = {}
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()

    def watch(self, name: str, refresh: Watcher) -> None:
        self.watchers[name] = refresh

    async def refresh(self, names: list[str] | None = None) -> None:
        for name in names or list(self.watchers):
            try:
                await self.watchers[name]()
            except Exception as exc:  # the next tick retries; the authorizer goes stale if this persists
                _log.warning("config refresh failed", watcher=name, error=type(exc).__name__)

    async def start(self) -> None:
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._poll(), name="config-poll"))
        if self.redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="config-listen"))

    async def publish(self, name: str) -> None:
        """Tell every replica (this one included) that ``name`` changed; a lost message is caught by polling."""
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
            await self.refresh()

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

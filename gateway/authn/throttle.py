"""Per-IP slowdown for login attempts: after ``free`` failures in a window each attempt waits longer (capped).

The per-account lockout (100 consecutive failures) stops guessing against one account; this slows one address
guessing across many accounts. Counters live in Redis when configured (shared by replicas), else in memory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

_log = structlog.get_logger("palisade.authn.throttle")

WINDOW_S = 900
MAX_DELAY_S = 5.0
BASE_DELAY_S = 0.25


class IpThrottle:
    def __init__(self, *, free: int, redis: Any = None) -> None:
        self.free = free
        self.redis = redis
        self._mem: dict[str, tuple[float, int]] = {}

    def delay_for(self, failures: int) -> float:
        over = failures - self.free
        return 0.0 if over < 0 else min(MAX_DELAY_S, BASE_DELAY_S * (2 ** min(over, 10)))

    async def failures(self, ip: str) -> int:
        if self.redis is not None:
            try:
                raw = await self.redis.get(f"palisade:login-fail:{ip}")
                return int(raw or 0)
            except Exception:  # a Redis outage must not block logins; the account lockout still holds
                return 0
        start, count = self._mem.get(ip, (0.0, 0))
        return count if time.monotonic() - start < WINDOW_S else 0

    async def wait(self, ip: str) -> float:
        delay = self.delay_for(await self.failures(ip))
        if delay:
            await asyncio.sleep(delay)
        return delay

    async def fail(self, ip: str) -> None:
        if self.redis is not None:
            try:
                key = f"palisade:login-fail:{ip}"
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.incr(key).expire(key, WINDOW_S).execute()
            except Exception as exc:  # the slowdown is best effort; the per-account lockout is in the database
                _log.warning("login throttle unavailable", error=type(exc).__name__)
            return
        if len(self._mem) > 100_000:
            self._mem.clear()  # bounded memory under a spray of addresses
        start, count = self._mem.get(ip, (0.0, 0))
        if time.monotonic() - start >= WINDOW_S:
            start, count = time.monotonic(), 0
        self._mem[ip] = (start, count + 1)

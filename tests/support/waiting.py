"""Awaited conditions instead of fixed sleeps: poll until a check holds, fail with what was last seen.

A fixed ``sleep(2.5)`` is either too long (slow suite) or too short (flaky on a loaded machine); polling a
condition is as fast as the system allows and says what it was waiting for when it gives up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Call ``check`` until it returns a truthy value (returned); exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - "not yet" (e.g. a server still starting)
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check!r}; last: {last!r}")
        time.sleep(interval)


async def await_until(check: Callable[[], Awaitable[T]], *, timeout: float = 30.0, interval: float = 0.05,
                      what: str = "") -> T:
    """Async ``wait_until``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check!r}; last: {last!r}")
        await asyncio.sleep(interval)

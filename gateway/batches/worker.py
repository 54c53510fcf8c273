"""The gateway's services inside a Celery worker process: built once, on one event loop in its own thread.

A worker runs many tasks; the services (database pools, keyring, audit trail, policy sync, backends) are built once
per process and keep their background loops (policy refresh, audit checkpoints, health checks) running between
tasks, which a fresh ``asyncio.run`` per task could not. Tasks hand coroutines to that loop and wait for them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_services: Any = None


def _ensure_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="palisade-services", daemon=True).start()
            _loop = loop
        return _loop


async def _open() -> Any:
    global _services
    if _services is None:
        from gateway.app import build_services
        from gateway.batches.storage import PURPOSE
        from gateway.settings import get_settings

        services = await build_services(get_settings())
        await services.router.start()
        await services.keyring.ensure(PURPOSE)
        await services.keyring.ensure("feedback")
        _services = services
    return _services


def call(fn: Callable[[Any], Awaitable[T]], timeout: float | None = None) -> T:
    """Run ``fn(services)`` on the process's service loop and return its result (blocking the task thread)."""
    loop = _ensure_loop()

    async def go() -> T:
        return await fn(await _open())

    return asyncio.run_coroutine_threadsafe(go(), loop).result(timeout)

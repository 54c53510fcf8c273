"""Services outside the HTTP server: in a Celery worker process and in CLI commands.

A worker's tasks are plain functions; ``run_in_services(fn)`` runs ``await fn(services)`` on one event loop per
worker process (a daemon thread), with the process's ``Services`` built on first use from the settings -- the
same composition root as the gateway, without the health loop or background model loading. A model is loaded
the first time a job calls it (``services.models.ensure_loaded``).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from gateway.services import Services, build_services
from gateway.settings import Settings, get_settings

T = TypeVar("T")


@asynccontextmanager
async def open_services(settings: Settings | None = None) -> AsyncIterator[Services]:
    """``async with open_services() as services:`` for a command or a test (closed, and flushed, on exit)."""
    services = await build_services(settings or get_settings(), serve=False)
    try:
        yield services
    finally:
        await services.close()


class _ProcessRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="palisade-jobs-loop", daemon=True)
        self.thread.start()
        self._services: Services | None = None
        self._lock = asyncio.Lock()

    async def services(self) -> Services:
        async with self._lock:
            if self._services is None:
                self._services = await build_services(self.settings, serve=False)
            return self._services

    def run(self, fn: Callable[[Services], Awaitable[T]]) -> T:
        async def call() -> T:
            return await fn(await self.services())

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    def close(self) -> None:
        if self._services is not None:
            asyncio.run_coroutine_threadsafe(self._services.close(), self.loop).result(timeout=30)
            self._services = None
        self.loop.call_soon_threadsafe(self.loop.stop)


_runtime: tuple[int, _ProcessRuntime] | None = None
_guard = threading.Lock()


def run_in_services(fn: Callable[[Services], Awaitable[T]]) -> T:
    """Run ``await fn(services)`` in this worker process's services (built once per process, after any fork)."""
    global _runtime
    with _guard:
        if _runtime is None or _runtime[0] != os.getpid():
            _runtime = (os.getpid(), _ProcessRuntime(get_settings()))
        runtime = _runtime[1]
    return runtime.run(fn)


def close_runtime() -> None:
    global _runtime
    with _guard:
        if _runtime is not None and _runtime[0] == os.getpid():
            _runtime[1].close()
        _runtime = None

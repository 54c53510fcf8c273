"""Model alias → pool of endpoints: least-busy choice, per-endpoint caps, bounded retry, circuit breakers,
active health checks, and the mapping of backend errors to gateway errors.

A pool is replaced atomically by :meth:`Router.set_route` (blue/green hot swap): the caller loads and warms the
new version's backends beside the old ones, then swaps; requests and streams already running keep the endpoint
they hold and finish on the old version; endpoints that left the route are closed once they have drained.
Every endpoint belongs to one registry version: results and stream deltas carry it (``model_version``), and a
stream's retry never moves to another version, so no stream mixes versions.

A canary is the pool ``<alias>@canary`` plus a rule (:meth:`Router.set_canary`): named principals, or a share
of requests chosen by a hash of the request id (deterministic, so a retried request lands on the same side).
Every finished request is counted per version in :attr:`Router.stats` (requests, 5xx/backend failures, latency
over a sliding window), so a canary can be compared with production; a request the canary rule took while no
canary endpoint was usable counts as a canary error (it fell back to production).

The router owns the backends it is given: :meth:`Router.start` starts them, removal (after drain) and
:meth:`Router.close` close them. Backends passed to ``set_route`` after ``start`` must already be started
(load the new model first, then swap).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.errors import ApiError, BadRequest, NotFound, ServiceUnavailable, UpstreamError, UpstreamTimeout
from gateway.inference.base import (
    Backend,
    BackendConnectError,
    BackendError,
    BackendInputError,
    BackendTimeout,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
from gateway.inference.version_stats import VersionStats
from gateway.metrics import BACKEND_ERRORS, BACKEND_HEALTHY, BACKEND_INFLIGHT, QUEUE_DEPTH, child
from gateway.observability import tracing
from gateway.settings import Settings

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Closed → (``failures`` consecutive failures) → open for ``reset_s`` → half-open: one trial decides."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, failures: int, reset_s: float, clock: Any = time.monotonic) -> None:
        self.threshold = max(1, failures)
        self.reset_s = reset_s
        self._clock = clock
        self._state = self.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._trial = False

    @property
    def state(self) -> str:
        if self._state == self.OPEN and self._clock() - self.opened_at >= self.reset_s:
            return self.HALF_OPEN
        return self._state

    def available(self) -> bool:
        """Could take a request now (no side effect)."""
        state = self.state
        return state == self.CLOSED or (state == self.HALF_OPEN and not self._trial)

    def acquire(self) -> bool:
        """Called when a request is sent; True when it is the single half-open trial."""
        if self.state == self.HALF_OPEN:
            self._state = self.HALF_OPEN
            self._trial = True
            return True
        return False

    def retry_after(self) -> float:
        if self._state == self.OPEN:
            return max(0.0, self.reset_s - (self._clock() - self.opened_at))
        return 0.0

    def success(self) -> None:
        self._state = self.CLOSED
        self.failures = 0
        self._trial = False

    def failure(self) -> None:
        state = self.state
        if state == self.HALF_OPEN:
            self._open()
            return
        if state == self.OPEN:  # a request sent before it opened: keep the reset time
            return
        self.failures += 1
        if self.failures >= self.threshold:
            self._open()

    def abandon(self) -> None:
        """The request ended without a verdict (client went away): free the half-open trial."""
        self._trial = False

    def _open(self) -> None:
        self._state = self.OPEN
        self.opened_at = self._clock()
        self._trial = False


CANARY_SUFFIX = "@canary"


@dataclass(frozen=True, slots=True)
class Canary:
    """Which requests of an alias go to ``<alias>@canary``: named principals, then ``percent`` of the rest."""

    percent: float = 0.0
    principals: frozenset[str] = frozenset()

    def takes(self, principal: str | None, key: str | None) -> bool:
        if principal is not None and principal in self.principals:
            return True
        if self.percent <= 0:
            return False
        if self.percent >= 100:
            return True
        digest = hashlib.blake2b((key or "").encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % 10_000 < round(self.percent * 100)


class _Endpoint:
    __slots__ = ("alias", "backend", "breaker", "healthy", "inflight", "max_concurrency", "name", "version")

    def __init__(
        self, alias: str, backend: Backend, max_concurrency: int, breaker: CircuitBreaker, version: str | None = None
    ) -> None:
        self.alias = alias
        self.version = version
        self.backend = backend
        self.name = getattr(backend, "name", None) or type(backend).__name__
        self.max_concurrency = max(1, max_concurrency)
        self.breaker = breaker
        self.healthy = True  # optimistic until the first health check says otherwise
        self.inflight = 0

    def usable(self) -> bool:
        return self.healthy and self.breaker.available()


class _Pool:
    def __init__(self, alias: str, endpoints: list[_Endpoint], version: str | None = None) -> None:
        self.alias = alias
        self.version = version
        self.endpoints = endpoints
        self.freed = asyncio.Event()
        self.retired = False

    def notify(self) -> None:
        self.freed.set()
        self.freed = asyncio.Event()

    def pick(self, exclude: set[int], version: str | None = None) -> tuple[_Endpoint | None, bool]:
        """Least-busy usable endpoint with a free slot; (None, True) when usable ones exist but are full.

        With ``version``, only that version's endpoints (a stream's retry stays on the version it started on).
        """
        best: _Endpoint | None = None
        busy = False
        for ep in self.endpoints:
            if id(ep) in exclude or not ep.usable() or (version is not None and ep.version != version):
                continue
            if ep.inflight >= ep.max_concurrency:
                busy = True
                continue
            if best is None or ep.inflight / ep.max_concurrency < best.inflight / best.max_concurrency:
                best = ep
        return best, busy


class Router:
    def __init__(
        self,
        settings: Settings,
        *,
        max_retries: int = 1,
        queue_timeout_s: float | None = None,
        health_timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.max_retries = max(0, max_retries)
        #: how long a request waits for a free slot before 503
        self.queue_timeout_s = (
            queue_timeout_s if queue_timeout_s is not None else min(30.0, settings.read_timeout_s)
        )
        self.health_timeout_s = health_timeout_s or max(
            1.0, min(settings.connect_timeout_s + 2.0, settings.health_interval_s)
        )
        self._pools: dict[str, _Pool] = {}
        self._canaries: dict[str, Canary] = {}
        self._health_task: asyncio.Task | None = None
        self._drains: set[asyncio.Task] = set()
        self._retired: list[_Endpoint] = []
        self._started = False
        #: per-version requests, errors and latency over the last ``canary_window_s`` (this replica only)
        self.stats = VersionStats(settings.canary_window_s)

    # ------------------------------------------------------------------ routes
    def set_route(
        self, alias: str, backends: list[Backend], *, max_concurrency: int = 64, version: str | None = None
    ) -> None:
        """Point ``alias`` at ``backends`` (already started once the router runs), serving ``version``."""
        if not backends:
            raise ValueError(f"route {alias!r} needs at least one backend")
        old = self._pools.get(alias)
        kept = {id(ep.backend): ep for ep in old.endpoints if ep.version == version} if old else {}
        endpoints = []
        for b in backends:
            ep = kept.get(id(b))
            if ep is None:
                ep = _Endpoint(
                    alias,
                    b,
                    max_concurrency,
                    CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_s),
                    version,
                )
                BACKEND_HEALTHY.labels(alias, ep.name).set(1)
            else:  # same backend object stays: keep its health, breaker and in-flight count
                ep.max_concurrency = max(1, max_concurrency)
            endpoints.append(ep)
        self._pools[alias] = _Pool(alias, endpoints, version)  # atomic: new requests see it from here on
        if old is not None:
            old.retired = True
            old.notify()
            self._retire([ep for ep in old.endpoints if ep not in endpoints])

    def set_canary(self, alias: str, *, percent: float = 0.0, principals: Iterable[str] = ()) -> None:
        """Send ``percent`` % of ``alias``'s requests (and all of ``principals``') to ``<alias>@canary``."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be within 0..100")
        self._canaries[alias] = Canary(float(percent), frozenset(principals))

    def clear_canary(self, alias: str) -> None:
        self._canaries.pop(alias, None)

    def canary(self, alias: str) -> Canary | None:
        return self._canaries.get(alias)

    def route_for(self, alias: str, *, principal: str | None = None, key: str | None = None) -> str:
        """The pool a request for ``alias`` goes to: ``<alias>@canary`` when its canary takes it, else ``alias``."""
        rule = self._canaries.get(alias)
        if rule is not None and rule.takes(principal, key):
            canary = alias + CANARY_SUFFIX
            pool = self._pools.get(canary)
            if pool is not None:
                if any(ep.usable() for ep in pool.endpoints):
                    return canary
                self.stats.record(alias, pool.version, None, error=True)  # its share, not served by it
        return alias

    def version(self, alias: str) -> str | None:
        """The version ``alias`` serves new requests with now."""
        pool = self._pools.get(alias)
        return pool.version if pool is not None else None

    def versions(self) -> dict[str, str | None]:
        return {alias: pool.version for alias, pool in sorted(self._pools.items())}

    def remove_route(self, alias: str) -> None:
        old = self._pools.pop(alias, None)
        if old is not None:
            old.retired = True
            old.notify()
            self._retire(old.endpoints)

    def _retire(self, endpoints: list[_Endpoint]) -> None:
        if not endpoints:
            return
        self._retired.extend(endpoints)  # close() closes whatever a drain has not closed yet
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (set up before start): nothing runs on them yet, nothing to drain
        task = loop.create_task(self._drain_and_close(endpoints))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain_and_close(self, endpoints: list[_Endpoint]) -> None:
        while any(ep.inflight for ep in endpoints):
            await asyncio.sleep(0.05)
        for ep in endpoints:
            if self._in_use(ep.backend):
                continue
            with contextlib.suppress(Exception):
                BACKEND_HEALTHY.remove(ep.alias, ep.name)
            try:
                await ep.backend.close()
            except Exception:
                log.exception("closing endpoint %s of %s failed", ep.name, ep.alias)
            if ep in self._retired:
                self._retired.remove(ep)

    def _in_use(self, backend: Backend) -> bool:
        return any(ep.backend is backend for pool in self._pools.values() for ep in pool.endpoints)

    def aliases(self) -> list[str]:
        return sorted(self._pools)

    def has(self, alias: str) -> bool:
        return alias in self._pools

    def _pool(self, alias: str) -> _Pool:
        pool = self._pools.get(alias)
        if pool is None:
            raise NotFound(f"model '{alias}' does not exist", param="model", code="model_not_found")
        return pool

    def context_length(self, alias: str) -> int | None:
        known = [ep.backend.context_length for ep in self._pool(alias).endpoints if ep.backend.context_length]
        return min(known) if known else None

    def count_prompt_tokens(self, alias: str, req: GenerationRequest) -> int:
        pool = self._pool(alias)
        ep = next((e for e in pool.endpoints if e.healthy), pool.endpoints[0])
        return ep.backend.count_prompt_tokens(req)

    # ------------------------------------------------------------------ slots
    def _unavailable(self, pool: _Pool) -> ServiceUnavailable:
        waits = [
            ep.breaker.retry_after() for ep in pool.endpoints if ep.healthy and ep.breaker.retry_after() > 0
        ]
        retry = min(waits) if waits else self.settings.health_interval_s
        return ServiceUnavailable(
            f"no healthy endpoint for model '{pool.alias}'",
            headers={"Retry-After": str(max(1, math.ceil(retry)))},
        )

    async def _acquire(
        self, alias: str, exclude: set[int], version: str | None = None
    ) -> tuple[_Endpoint, bool]:
        """A slot on the best endpoint; the flag says it is that endpoint's half-open trial."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout_s
        waiting = False
        try:
            while True:
                pool = self._pool(alias)  # re-read: a hot swap while waiting sends us to the new pool
                ep, busy = pool.pick(exclude, version)
                if ep is not None:
                    trial = ep.breaker.acquire()
                    ep.inflight += 1
                    child(BACKEND_INFLIGHT, alias, ep.name).inc()
                    return ep, trial
                if not busy:
                    BACKEND_ERRORS.labels(alias, "-", "unavailable").inc()
                    raise self._unavailable(pool)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    BACKEND_ERRORS.labels(alias, "-", "queue_timeout").inc()
                    raise ServiceUnavailable(
                        f"model '{alias}' is at capacity, try again later", headers={"Retry-After": "1"}
                    )
                if not waiting:
                    waiting = True
                    QUEUE_DEPTH.labels(alias).inc()
                freed = pool.freed
                with contextlib.suppress(TimeoutError):
                    # wake at least every health interval: health or breaker changes do not signal
                    await asyncio.wait_for(freed.wait(), min(remaining, 0.5))
        finally:
            if waiting:
                QUEUE_DEPTH.labels(alias).dec()

    def _release(self, ep: _Endpoint, *, trial: bool, verdict: bool) -> None:
        if trial and not verdict:  # the half-open trial ended without a verdict: let another one go
            ep.breaker.abandon()
        ep.inflight -= 1
        child(BACKEND_INFLIGHT, ep.alias, ep.name).dec()
        pool = self._pools.get(ep.alias)
        if pool is not None:
            pool.notify()

    # ------------------------------------------------------------------ outcomes
    def _fail(self, ep: _Endpoint, kind: str) -> None:
        BACKEND_ERRORS.labels(ep.alias, ep.name, kind).inc()
        ep.breaker.failure()

    def _to_api_error(self, ep: _Endpoint, exc: BaseException) -> ApiError:
        """Records the failure and returns the error the client sees (no upstream internals)."""
        alias = ep.alias
        if isinstance(exc, BackendInputError):
            BACKEND_ERRORS.labels(alias, ep.name, "input").inc()
            ep.breaker.success()  # the upstream answered properly
            return BadRequest(str(exc) or "the input cannot be served by this model")
        if isinstance(exc, BackendTimeout):
            self._fail(ep, "timeout")
            log.warning("endpoint %s of %s timed out: %s", ep.name, alias, exc)
            return UpstreamTimeout(f"the inference server for model '{alias}' did not answer in time")
        if isinstance(exc, BackendConnectError):
            self._fail(ep, "connect")
            log.warning("endpoint %s of %s unreachable: %s", ep.name, alias, exc)
            return self._unavailable(self._pools.get(alias) or _Pool(alias, [ep]))
        if isinstance(exc, BackendError):
            self._fail(ep, "error")
            log.warning("endpoint %s of %s failed: %s", ep.name, alias, exc)
        else:
            self._fail(ep, "internal")
            log.error("endpoint %s of %s raised %r", ep.name, alias, exc, exc_info=exc)
        return UpstreamError(f"the inference server for model '{alias}' failed")

    # ------------------------------------------------------------------ requests
    async def _next_endpoint(
        self, alias: str, tried: set[int], last: ApiError | None, version: str | None = None
    ) -> tuple[_Endpoint, bool]:
        """An endpoint not tried yet; on a retry with nothing left, the first attempt's error is the answer."""
        try:
            ep, trial = await self._acquire(alias, tried, version)
        except ServiceUnavailable:
            if last is None:
                raise
            raise last from None
        tried.add(id(ep))
        return ep, trial

    def observe(self, pool_alias: str, version: str | None, started: float, *, error: bool) -> None:
        """Count one finished request under its base alias (a canary pool's requests count for its alias)."""
        self.stats.record(pool_alias.removesuffix(CANARY_SUFFIX), version, time.perf_counter() - started,
                          error=error)

    async def generate(self, alias: str, req: GenerationRequest) -> GenerationResult:
        version = self._pool(alias).version
        started = time.perf_counter()
        try:
            result = await self._generate(alias, req)
        except ApiError as exc:
            if exc.status_code >= 500:  # a 4xx is the request's fault, not the version's
                self.observe(alias, version, started, error=True)
            raise
        self.observe(alias, result.model_version, started, error=False)
        return result

    async def _generate(self, alias: str, req: GenerationRequest) -> GenerationResult:
        tried: set[int] = set()
        last: ApiError | None = None
        for _attempt in range(1 + self.max_retries):
            with tracing.span("routing", model=alias, attempt=_attempt):
                ep, trial = await self._next_endpoint(alias, tried, last)
            verdict = False
            try:
                with tracing.span("upstream", kind="client", model=alias, endpoint=ep.backend.name):
                    result = await ep.backend.generate(req)
            except BackendConnectError as exc:
                verdict = True
                last = self._to_api_error(ep, exc)
                continue
            except Exception as exc:
                verdict = True
                raise self._to_api_error(ep, exc) from None
            else:
                verdict = True
                ep.breaker.success()
                result.model_version = ep.version
                return result
            finally:
                self._release(ep, trial=trial, verdict=verdict)  # no verdict: cancelled, nothing learnt
        assert last is not None
        raise last

    async def open_stream(self, alias: str, req: GenerationRequest) -> RouterStream:
        """Choose the endpoint now, so the version is known before the first byte (the response header)."""
        version = self._pool(alias).version
        started = time.perf_counter()
        try:
            with tracing.span("routing", model=alias, attempt=0):
                ep, trial = await self._next_endpoint(alias, set(), None)
        except ApiError as exc:
            if exc.status_code >= 500:
                self.observe(alias, version, started, error=True)
            raise
        return RouterStream(self, alias, req, ep, trial, started)

    async def stream(self, alias: str, req: GenerationRequest) -> AsyncIterator[StreamDelta]:
        opened = await self.open_stream(alias, req)
        try:
            async for delta in opened:
                yield delta
        finally:
            await opened.aclose()

    async def _stream_from(
        self, alias: str, req: GenerationRequest, ep: _Endpoint, trial: bool
    ) -> AsyncIterator[StreamDelta]:
        tried: set[int] = {id(ep)}
        last: ApiError | None = None
        version = ep.version
        for attempt in range(1 + self.max_retries):
            if attempt:  # a retry stays on the version this stream started on
                with tracing.span("routing", model=alias, attempt=attempt):
                    ep, trial = await self._next_endpoint(alias, tried, last, version)
            it = ep.backend.stream(req)
            yielded = False
            verdict = False
            retry = False
            try:
                while True:
                    try:
                        if yielded:
                            delta = await anext(it)
                        else:  # the request goes out here: connect and time to the first token, traceparent sent
                            with tracing.span("upstream", kind="client", model=alias, endpoint=ep.backend.name,
                                              stream=True):
                                delta = await anext(it)
                    except StopAsyncIteration:
                        break
                    except BackendConnectError as exc:
                        verdict = True
                        last = self._to_api_error(ep, exc)
                        if yielded:
                            raise UpstreamError(f"the inference server for model '{alias}' failed") from None
                        retry = True
                        break
                    except Exception as exc:
                        verdict = True
                        raise self._to_api_error(ep, exc) from None
                    yielded = True
                    delta.model_version = version
                    yield delta
                if not retry:
                    verdict = True
                    ep.breaker.success()
                    return
            finally:
                try:
                    await it.aclose()  # propagates the cancellation to the backend (frees its slot upstream)
                except Exception:
                    log.debug("closing the stream of %s failed", ep.name, exc_info=True)
                finally:
                    self._release(
                        ep, trial=trial, verdict=verdict
                    )  # not verdict: closed early by the consumer, or cancelled
        assert last is not None
        raise last

    # ------------------------------------------------------------------ lifecycle + health
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        endpoints = [ep for pool in self._pools.values() for ep in pool.endpoints]
        unique = list({id(ep.backend): ep for ep in endpoints}.values())
        results = await asyncio.gather(*(ep.backend.start() for ep in unique), return_exceptions=True)
        for ep, res in zip(unique, results, strict=True):
            if isinstance(res, BaseException):
                log.error("endpoint %s of %s failed to start: %r", ep.name, ep.alias, res)
                for e in endpoints:
                    if e.backend is ep.backend:
                        self._mark(e, False)
        await self.check_health()
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop(), name="router-health")

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._health_task
            self._health_task = None
        for task in list(self._drains):
            task.cancel()
        live = [ep for pool in self._pools.values() for ep in pool.endpoints]
        backends = {id(ep.backend): ep.backend for ep in [*live, *self._retired]}
        self._retired.clear()
        for backend in backends.values():
            try:
                await backend.close()
            except Exception:
                log.exception("closing backend %s failed", getattr(backend, "name", backend))
        self._started = False

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            try:
                await self.check_health()
            except Exception:  # never let the loop die
                log.exception("health check round failed")

    async def check_health(self) -> None:
        """One round of active health checks over every endpoint (concurrently, each bounded)."""
        endpoints = [ep for pool in list(self._pools.values()) for ep in pool.endpoints]
        if not endpoints:
            return
        results = await asyncio.gather(*(self._probe(ep.backend) for ep in endpoints))
        for ep, ok in zip(endpoints, results, strict=True):
            self._mark(ep, ok)
        for pool in list(self._pools.values()):
            pool.notify()

    async def _probe(self, backend: Backend) -> bool:
        try:
            async with asyncio.timeout(self.health_timeout_s):
                return bool(await backend.health())
        except Exception:
            return False

    def _mark(self, ep: _Endpoint, healthy: bool) -> None:
        if ep.healthy != healthy:
            log.info("endpoint %s of %s is now %s", ep.name, ep.alias, "healthy" if healthy else "unhealthy")
        ep.healthy = healthy
        BACKEND_HEALTHY.labels(ep.alias, ep.name).set(1 if healthy else 0)

    def status(self) -> dict[str, list[dict]]:
        return {
            alias: [
                {
                    "endpoint": ep.name,
                    "healthy": ep.healthy,
                    "breaker": ep.breaker.state,
                    "inflight": ep.inflight,
                    "version": ep.version,
                }
                for ep in pool.endpoints
            ]
            for alias, pool in sorted(self._pools.items())
        }

    def ready(self) -> bool:
        return all(any(ep.healthy for ep in pool.endpoints) for pool in self._pools.values())


class RouterStream:
    """A stream with its first endpoint (and so its version) already chosen; iterate it, then ``aclose`` it.

    Closing it before the first item frees the slot it holds (an async generator that never started would not
    run its ``finally``).
    """

    def __init__(self, router: Router, alias: str, req: GenerationRequest, ep: _Endpoint, trial: bool,
                 started: float | None = None) -> None:
        self.version = ep.version
        self._alias = alias
        #: counted in the router's stats once, when the stream ends (its whole duration) or fails
        self._started_at = started if started is not None else time.perf_counter()
        self._observed = False
        self._router = router
        self._ep = ep
        self._trial = trial
        self._gen = router._stream_from(alias, req, ep, trial)
        self._started = False
        self._closed = False

    def __aiter__(self) -> RouterStream:
        return self

    async def __anext__(self) -> StreamDelta:
        self._started = True
        try:
            return await self._gen.__anext__()
        except StopAsyncIteration:
            self._observe(error=False)
            raise
        except ApiError as exc:
            if exc.status_code >= 500:
                self._observe(error=True)
            raise

    def _observe(self, *, error: bool) -> None:
        if not self._observed:
            self._observed = True
            self._router.observe(self._alias, self.version, self._started_at, error=error)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._started:
            self._router._release(self._ep, trial=self._trial, verdict=False)
        await self._gen.aclose()

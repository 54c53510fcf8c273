"""``RateLimiter.reserve`` / ``settle``: suspension and load-shedding checks in process, then one atomic script
call per step against Redis (or the in-memory buckets in embedded mode).

429 carries ``Retry-After`` plus ``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers)
and names the exhausted limit; it is raised in ``prepare``, before any stream starts. Redis down: 503 unless
an admin set ``limits.fail_open``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
import time
from typing import Any

import structlog
from prometheus_client import Counter
from redis.exceptions import NoScriptError

from gateway.authn.principal import Principal
from gateway.errors import Forbidden, RateLimited, ServiceUnavailable
from gateway.limits import Reservation, Scope
from gateway.limits.config import LimitsConfig
from gateway.limits.gcra import (
    RESERVE_LUA,
    SETTLE_LUA,
    SETTLE_THEN_RESERVE_LUA,
    WINDOW_S,
    MemoryBuckets,
    Refusal,
)
from gateway.limits.resp import RespPipe
from gateway.limits.shedding import LoadShedder
from gateway.metrics import REGISTRY

_log = structlog.get_logger("palisade.limits")

LIMITED = Counter(
    "palisade_rate_limited_total", "Requests refused by a limit", ["scope", "limit"], registry=REGISTRY
)
LIMITER_ERRORS = Counter(
    "palisade_limiter_unavailable_total", "Limiter store failures by outcome", ["outcome"], registry=REGISTRY
)
SETTLE_BATCH_MAX = 256
#: how long a released settle waits for this process's next reserve to carry it to Redis in the same script call
#: (under load: one round trip per request instead of two); after that it is sent on its own
SETTLE_LINGER_S = 0.02

_WINDOWS = {"requests_per_minute": 60, "tokens_per_minute": 60, "daily_tokens": 86400}


def rate_limited(r: Refusal) -> RateLimited:
    retry = max(1, math.ceil(r.retry_after_s))
    name = f"{r.scope.kind}.{r.limit_name}"
    window = _WINDOWS.get(r.limit_name)
    policy = f'"{name}";q={r.limit}' + (f";w={window}" if window else "")
    headers = {
        "Retry-After": str(retry),
        "RateLimit-Policy": policy,
        "RateLimit": f'"{name}";r={r.remaining};t={max(retry, r.reset_s)}',
    }
    who = "you" if r.scope.kind == "principal" else f"{r.scope.kind} '{r.scope.subject}'"
    message = (
        f"rate limit exceeded: {r.limit_name.replace('_', ' ')} for {who} (limit {r.limit}); "
        f"retry after {retry} s"
    )
    return RateLimited(
        message,
        code=r.limit_name,
        headers=headers,
        extra={
            "limit": {
                "scope": r.scope.kind,
                "name": r.limit_name,
                "limit": r.limit,
                "window_s": window,
                "retry_after_s": retry,
            }
        },
    )


def _settle_args(batch: list[tuple[Reservation, int]]) -> tuple[list[str], list[Any]]:
    """SETTLE_LUA's keys and args for a batch of (reservation, used tokens)."""
    keys: list[str] = []
    args: list[Any] = []
    for res, used in batch:
        args += [res.token, res.tokens, used, res.day, len(res.scopes)]
        for s in res.scopes:
            keys.append(s.key)
            args += [s.tokens_per_min, s.concurrency, s.daily_tokens]
    return keys, args


def _settle_failed(exc: BaseException, reservations: int) -> None:
    LIMITER_ERRORS.labels("settle_failed").inc(reservations)
    _log.warning("limiter settle failed; the reservations stay charged until their leases expire",
                 error=type(exc).__name__, reservations=reservations)


class _Script:
    """One Lua script called by EVALSHA straight through the client (redis-py's Script object re-checks and
    re-wraps on every call); loaded on first NOSCRIPT. Still one round trip per call."""

    def __init__(self, redis: Any, source: str, timeout_s: float | None = None, fast: RespPipe | None = None) -> None:
        self.redis, self.source, self.timeout_s = redis, source, timeout_s
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts by SHA-1
        self.fast = fast

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self._send(command)
        except NoScriptError:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.script_load(self.source)
            return await self._send(command)

    async def _send(self, command: tuple[Any, ...]) -> Any:
        if self.fast is not None:  # the limiter's own pipelined line: the reply's own timer is the deadline
            return await self.fast.call(*command, timeout_s=self.timeout_s)
        # one timer for the whole call (a client made with socket_timeout wraps every send in asyncio.wait_for,
        # a task per command)
        async with asyncio.timeout(self.timeout_s):
            return await self.redis.execute_command(*command)


class RateLimiter:
    def __init__(
        self,
        config: LimitsConfig,
        *,
        redis: Any = None,
        shedder: LoadShedder | None = None,
        lease_s: float = 600.0,
        watch: Any = None,
        timeout_s: float | None = None,
        owns_client: bool = False,
        fast: RespPipe | None = None,
    ) -> None:
        """``timeout_s`` bounds each script call (give a client without socket_timeout); ``owns_client``: ``close``
        closes ``redis`` too."""
        self.config = config
        self.redis = redis
        self.owns_client = owns_client
        self.timeout_s = timeout_s
        self.shedder = shedder
        self.lease_s = lease_s  # a concurrency slot a crashed replica never released expires after this
        self.watch = watch  # usage anomaly detector (gateway/limits/anomaly.py), optional
        self.memory = MemoryBuckets() if redis is None else None
        #: the scripts' own pipelined line to Redis (gateway.limits.resp), closed with the limiter
        self.fast = fast if redis is not None else None
        if redis is not None:
            self._reserve = _Script(redis, RESERVE_LUA, timeout_s, self.fast)
            self._settle = _Script(redis, SETTLE_LUA, timeout_s, self.fast)
            self._settle_reserve = _Script(redis, SETTLE_THEN_RESERVE_LUA, timeout_s, self.fast)
        #: released reservations not sent yet, and the one sender at a time (the settler task, or a reserve that
        #: carries them); the timer that starts the settler when no reserve came to carry them
        self._released: list[tuple[Reservation, int]] = []
        self._sending = asyncio.Lock()
        self._settler: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None

    async def reserve(
        self, principal: Principal, model: str, tokens: int, *, priority: int | None = None
    ) -> Reservation:
        """``priority`` caps the principal's own (a batch line runs below its owner's interactive calls)."""
        reason = self.config.snapshot.suspended.get(principal.id)
        if reason is not None:
            raise Forbidden(f"this credential is suspended pending an administrator's review ({reason})")
        if self.shedder is not None:
            own = self.config.priority_of(principal)
            self.shedder.check(own if priority is None else min(own, priority), model)
        scopes = self.config.scopes_for(principal, model)
        rid = secrets.token_hex(8)
        res = Reservation(principal.id, model, tokens, token=rid, scopes=scopes)
        if not scopes:
            if self.watch is not None:  # unlimited principals still have a usage baseline
                self.watch.note(principal.id, tokens)
            return res
        if self.memory is not None:
            res.day, refusal = self.memory.reserve(time.time(), scopes, rid, tokens, self.lease_s, res.left)
        else:
            refusal = await self._reserve_redis(res)
        if self.watch is not None:
            self.watch.note(principal.id, tokens, denied=refusal is not None)
        if refusal is not None:
            LIMITED.labels(refusal.scope.kind, refusal.limit_name).inc()
            raise rate_limited(refusal)
        return res

    async def _reserve_redis(self, res: Reservation) -> Refusal | None:
        keys = [s.key for s in res.scopes]
        args: list[Any] = [res.token, res.tokens, int(self.lease_s)]
        for s in res.scopes:
            args += [s.requests_per_min, s.tokens_per_min, s.concurrency, s.daily_tokens]
        try:
            if self._released or self._sending.locked():  # what was released before this request goes first
                out = await self._settle_then_reserve(keys, args)
            else:
                out = await self._reserve(keys, args)
        except Exception as exc:
            if self.config.fail_open:
                LIMITER_ERRORS.labels("fail_open").inc()
                _log.warning("limiter unavailable; failing open as configured", error=type(exc).__name__)
                res.scopes = ()  # nothing was charged, nothing to settle
                return None
            LIMITER_ERRORS.labels("fail_closed").inc()
            raise ServiceUnavailable(
                "the rate limiter is unavailable; refusing until it is back", headers={"Retry-After": "5"}
            ) from exc
        if int(out[0]) == 1:
            res.day = int(out[1])
            res.left = [(int(out[j]), int(out[j + 1]), int(out[j + 2]), int(out[j + 3])) for j in range(2, len(out), 4)]
            return None
        kind = out[2].decode() if isinstance(out[2], bytes) else str(out[2])
        scope = res.scopes[int(out[1]) - 1]
        return Refusal(scope, kind, int(out[3]) / 1000, int(out[4]), int(out[5]), int(out[6]))

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Return the unused part of the reservation and release its concurrency slot; returns once Redis did."""
        used = self._claim(reservation, used_tokens)
        if used is not None:
            await self._send_settles([(reservation, used)])

    def release(self, reservation: Reservation, used_tokens: int) -> None:
        """``settle`` without waiting for it (after the answer left): in memory at once; with Redis queued, and
        carried by this process's next reserve in the same script call (settles first), or after
        ``SETTLE_LINGER_S`` sent by one background sender, settles that queued up behind each other in one call.
        Either way a later ``reserve`` in this process reaches Redis only after every settle released before it,
        so a caller who sends one request after another never finds its previous request still holding a slot;
        other processes may see a slot held up to ``SETTLE_LINGER_S`` longer (charged more, never less). A failed
        send is logged and counted (``palisade_limiter_unavailable_total{outcome="settle_failed"}``): its tokens
        stay charged (never refunded twice) and its concurrency slot frees itself when its lease expires."""
        used = self._claim(reservation, used_tokens)
        if used is None:
            return
        self._released.append((reservation, used))
        if self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(SETTLE_LINGER_S, self._start_settler)

    def _start_settler(self) -> None:
        self._linger = None
        if self._released and (self._settler is None or self._settler.done()):
            self._settler = asyncio.get_running_loop().create_task(self._send_released(), name="limits-settle")

    def _claim(self, reservation: Reservation, used_tokens: int) -> int | None:
        """Mark the reservation settled (once); settle it in memory at once, or return the used tokens still to
        send to Redis (None: nothing to send)."""
        if reservation.settled:
            return None
        reservation.settled = True
        if not reservation.scopes:
            return None
        used = max(0, int(used_tokens))
        if self.memory is not None:
            self.memory.settle(time.time(), reservation.scopes, reservation.token, reservation.tokens, used,
                               reservation.day)
            return None
        return used

    async def _drain(self) -> None:
        """Wait until every settle released so far reached Redis (sent here if nobody is sending it)."""
        if self._released or self._sending.locked():
            await self._send_released()

    async def _send_released(self) -> None:
        """Send the released settles, a batch per call, one sender at a time; failures are logged, never raised."""
        async with self._sending:
            await self._send_backlog(0)

    async def _send_backlog(self, keep: int) -> None:
        """Send released settles a batch per call until at most ``keep`` are left (the sender holds the lock)."""
        while len(self._released) > keep:
            batch = self._released[:SETTLE_BATCH_MAX]
            del self._released[:SETTLE_BATCH_MAX]
            try:
                await self._send_settles(batch)
            except Exception as exc:
                _settle_failed(exc, len(batch))

    async def _settle_then_reserve(self, keys: list[str], args: list[Any]) -> Any:
        """The reserve, carrying the settles released before it (settled first, in the same script call)."""
        async with self._sending:
            await self._send_backlog(SETTLE_BATCH_MAX)  # a backlog longer than one batch goes on its own first
            batch, self._released = self._released, []
            if not batch:
                return await self._reserve(keys, args)
            settle_keys, settle_args = _settle_args(batch)
            try:
                return await self._settle_reserve(
                    [*settle_keys, *keys], [len(settle_keys), len(settle_args), *settle_args, *args]
                )
            except Exception as exc:
                _settle_failed(exc, len(batch))
                raise

    async def _send_settles(self, batch: list[tuple[Reservation, int]]) -> None:
        await self._settle(*_settle_args(batch))

    async def close(self) -> None:
        """Send what is still released (shutdown: no settle is left behind while Redis answers)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.redis is not None:
            try:
                async with asyncio.timeout(5):
                    await self._drain()
            except TimeoutError:
                _log.warning("limiter settles not sent before shutdown", reservations=len(self._released))
        if self.fast is not None:
            await self.fast.aclose()
        if self.owns_client and self.redis is not None:
            await self.redis.aclose()

    async def usage(self, principal: Principal, model: str | None = None) -> dict[str, Any]:
        """What the principal has left now (for ``GET /v1/limits``); reads, never charges."""
        scopes = self.config.scopes_for(principal, model or "")
        await self._drain()  # read what this process already gave back
        out = []
        now = time.time()
        for s in scopes:
            entry: dict[str, Any] = {
                "scope": s.kind,
                "subject": s.subject,
                "limits": {
                    "requests_per_min": s.requests_per_min,
                    "tokens_per_min": s.tokens_per_min,
                    "concurrency": s.concurrency,
                    "daily_tokens": s.daily_tokens,
                },
            }
            entry["used"] = await self._read_usage(s, now)
            out.append(entry)
        return {"principal": principal.id, "scopes": out}

    async def _read_usage(self, s: Scope, now: float) -> dict[str, Any]:
        day = math.floor(now / 86400)
        if self.memory is not None:
            tpm_tat = self.memory.tat.get(s.key + ":tpm", 0.0)
            conc = sum(1 for exp in self.memory.leases.get(s.key, {}).values() if exp > now)
            daily = self.memory.daily.get(f"{s.key}:day:{day}", 0)
        else:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.get(s.key + ":tpm")
                pipe.zcount(s.key + ":conc", now, "+inf")
                pipe.get(f"{s.key}:day:{day}")
                async with asyncio.timeout(self.timeout_s):
                    raw_tat, conc, raw_daily = await pipe.execute()
            except Exception as exc:
                raise ServiceUnavailable(
                    "the rate limiter is unavailable", headers={"Retry-After": "5"}
                ) from exc
            tpm_tat, daily = float(raw_tat or 0), int(raw_daily or 0)
        tokens_window = 0
        if s.tokens_per_min and tpm_tat > now:
            tokens_window = round((tpm_tat - now) * s.tokens_per_min / WINDOW_S)
        return {"tokens_in_window": tokens_window, "concurrent": int(conc), "daily_tokens": int(daily)}

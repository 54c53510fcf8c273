"""What every HTTP upstream backend shares (TGI and OpenAI-compatible servers): one pooled aiohttp session per
backend and event loop, the connect / first-byte / idle timeouts, how transport failures and error bodies map to
backend errors, and the OpenAI wire shapes (usage, chat chunks, error messages) that both speak.

Timeouts: ``connect_s`` bounds connecting (and waiting for a pooled connection), ``read_s`` the first byte,
``idle_s`` the gap between stream events; there is no total bound (a long stream is fine while it moves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import msgspec

from gateway.inference.base import (
    BackendConnectError,
    BackendError,
    BackendInputError,
    BackendTimeout,
    FinishReason,
    Usage,
)
from gateway.inference.http1 import UpstreamConnectError
from gateway.observability import tracing

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ERROR_CHARS = 500
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 3.0
    read_s: float = 60.0
    idle_s: float = 30.0
    health_s: float | None = None

    @property
    def health(self) -> float:
        return self.health_s or max(1.0, self.connect_s)

    @property
    def first_byte(self) -> float:
        return self.read_s + self.connect_s

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=self.connect_s, sock_connect=self.connect_s,
                                     sock_read=max(self.read_s, self.idle_s))


class PooledSession:
    """One pooled :class:`aiohttp.ClientSession` per event loop, made lazily inside the running loop.

    A response read to its end returns its connection to the pool; one left unfinished (a client gone
    mid-stream) closes it, so the upstream sees the disconnect and stops generating."""

    def __init__(
        self, *, headers: dict[str, str], timeouts: Timeouts, max_connections: int = 0, keepalive_s: float = 30.0,
        dns_ttl_s: int | None = 10,
    ) -> None:
        self.headers = headers
        self.timeouts = timeouts
        self.max_connections = max_connections  # 0 = unbounded (the router caps concurrency per endpoint)
        self.keepalive_s = keepalive_s
        self.dns_ttl_s = dns_ttl_s
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def open(self) -> bool:
        return self._session is not None

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._loop is not loop:
            session = self._session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=self.timeouts.client_timeout(),
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                               keepalive_timeout=self.keepalive_s, ttl_dns_cache=self.dns_ttl_s),
                trust_env=False,  # upstreams are addressed directly, never through *_PROXY variables
                # no cookies: one session serves every principal, so a cookie an upstream set while answering one
                # caller must never ride along on another caller's request (and no jar work per request)
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
                trace_configs=tracing.aiohttp_trace_configs(),  # W3C traceparent upstream (tracing on)
            )
            self._loop = loop
        return session

    async def close(self) -> None:
        session, self._session = self._session, None
        loop, self._loop = self._loop, None
        if session is None or session.closed:
            return
        if loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await session.close()
        # else: made in another event loop, now gone with its sockets; it cannot be awaited from this one

    async def status_of(self, url: str) -> int:
        """GET ``url`` within the health timeout, read to the end (the connection goes back to the pool)."""
        async with asyncio.timeout(self.timeouts.health), self.get().get(url, allow_redirects=False) as resp:
            await resp.read()
            return resp.status


async def next_within(events: AsyncIterator[T], timeout: float) -> T:
    """The next stream event, or TimeoutError when the upstream stays silent too long (StopAsyncIteration ends)."""
    async with asyncio.timeout(timeout):
        return await anext(events)


def transport_error(exc: BaseException, what: str, *, started: bool) -> BackendError:
    """A transport failure → a backend error: a refused connection before anything was produced may be retried
    on another endpoint; anything later may not."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return BackendTimeout(f"{what} timed out")
    if isinstance(exc, aiohttp.ClientConnectorError | UpstreamConnectError) and not started:  # refused, DNS
        return BackendConnectError(f"cannot connect to {what}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return BackendError(f"{what}: connection failed ({type(exc).__name__})")
    log.exception("unexpected error from %s", what)
    return BackendError(f"{what} failed")


def status_error(status: int, message: str, what: str) -> Exception:
    """A non-200 answer → a backend error: the client's fault (4xx input), overload (retry elsewhere), failure."""
    if status in (400, 413, 422):
        return BackendInputError(message[:MAX_ERROR_CHARS] or "the upstream rejected the input")
    if status in (429, 503):  # overloaded / not ready: nothing was produced, another endpoint may serve it
        return BackendConnectError(f"{what} is overloaded or not ready (HTTP {status})")
    if status in (502, 504):
        return BackendError(f"{what} failed (HTTP {status})")
    return BackendError(f"{what} failed (HTTP {status}): {message[:200]}")


def finish_reason(reason: Any) -> FinishReason:
    value = getattr(reason, "value", reason)
    return "length" if value == "length" else "stop"


def usage_of(raw: Any) -> Usage | None:
    """OpenAI's ``usage`` object, when the upstream sent a usable one."""
    if not isinstance(raw, dict):
        return None
    try:
        return Usage(prompt_tokens=int(raw.get("prompt_tokens") or 0),
                     completion_tokens=int(raw.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return None


def error_message(payload: Any) -> str:
    """The upstream's error message (OpenAI ``{"error": {"message"}}``, vLLM ``{"message"}``, TGI
    ``{"error": "..."}``), trimmed; empty when there is none. ``payload`` is decoded JSON or raw bytes."""
    if isinstance(payload, bytes | bytearray):
        try:
            payload = _decode(payload)
        except ValueError:
            return ""
    if not isinstance(payload, dict):
        return ""
    err = payload.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
    elif isinstance(err, str):
        msg = err
    else:
        msg = payload.get("message")
    return str(msg)[:MAX_ERROR_CHARS] if msg else ""


def chat_chunk(obj: Any, what: str, *, chat: bool = True) -> tuple[str, Any, Usage | None]:
    """One OpenAI streaming chunk (chat ``delta.content`` or completion ``text``) → (text, finish, usage)."""
    if not isinstance(obj, dict):
        raise BackendError(f"upstream answered garbage ({what}, bad stream event)")
    if "error" in obj and "choices" not in obj:
        raise BackendError(f"{what} failed mid-stream: {error_message(obj)}")
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise BackendError(f"upstream answered garbage ({what}, no choices)")
    usage = usage_of(obj.get("usage"))
    if not choices:
        return "", None, usage
    choice = choices[0]
    if not isinstance(choice, dict):
        raise BackendError(f"upstream answered garbage ({what}, bad choice)")
    if chat:
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise BackendError(f"upstream answered garbage ({what}, bad text)")
    return text or "", choice.get("finish_reason"), usage


def chat_answer(payload: Any, what: str, *, chat: bool = True) -> tuple[str, Any, Usage | None]:
    """A whole OpenAI answer → (text, finish, usage)."""
    try:
        choice = payload["choices"][0]
        text = (choice["message"].get("content") or "") if chat else choice["text"]
        if not isinstance(text, str):
            raise TypeError("text")
        return text, choice.get("finish_reason"), usage_of(payload.get("usage"))
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BackendError(f"upstream answered garbage ({what}, unexpected answer)") from None

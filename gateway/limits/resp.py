"""The limiter's own line to Redis: one pipelined connection that sends commands and reads their replies in order.

Every request makes one limiter script call (``EVALSHA``), so its cost is on the hot path. Through redis-py's
client a call costs ~170 µs of CPU (connection pool, retry wrapper, command packing, response callbacks,
observability hooks); this costs ~65 µs. The wire protocol is parsed by hiredis, the C parser redis-py itself
uses. Concurrent calls share the connection: each is written as it comes and answered in the order sent, as Redis
answers a connection's commands.

Only ``redis://`` URLs (TCP, optional user, password and database). For ``rediss://`` (TLS) or ``unix://`` the
limiter keeps redis-py's client (``for_url`` returns None). A connection that breaks, a call whose reply did not
come within its ``timeout_s`` (TimeoutError for it), or a call cancelled while its reply is pending (the line's
state is unknown) closes the connection and fails every other pending call with ``ConnectionError``. The next
call connects again. A call on a kept connection that the server had closed is tried once more on a new one: the
limiter's scripts charge at most twice then, never less, and the concurrency slot is keyed by the reservation's
id.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any
from urllib.parse import urlsplit

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class _Line(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.loop = asyncio.get_running_loop()  # made by loop.create_connection: the loop the line belongs to

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while (reply := self.reader.gets()) is not False:
            if not pending:  # a reply nobody asked for: the line is out of step
                self.close(RedisConnectionError("redis sent an unexpected reply"))
                return
            waiter = pending.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"redis connection lost: {exc}" if exc else "redis closed the connection"))

    def close(self, exc: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        while self.pending:
            waiter = self.pending.popleft()
            if not waiter.done():
                waiter.set_exception(exc)


def _expire(line: _Line, waiter: asyncio.Future[Any], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"redis did not answer within {timeout_s:g} s"))
        line.close(RedisConnectionError("a call timed out while its reply was pending"))


def _command(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RespPipe:
    """``await pipe.call("EVALSHA", sha, ...)``: the reply as hiredis parses it; an error reply raises
    ResponseError (NoScriptError for ``NOSCRIPT``), a broken line RedisConnectionError."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, connect_timeout_s: float = 2.0) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.connect_timeout_s = connect_timeout_s
        self._line: _Line | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def for_url(cls, url: str, connect_timeout_s: float = 2.0) -> RespPipe | None:
        if urlsplit(url).scheme != "redis":
            return None
        kw = parse_url(url)  # redis-py's own reading (``/3`` or ``?db=3``, quoted user and password): the same database
        return cls(kw.get("host") or "localhost", int(kw.get("port") or 6379), db=int(kw.get("db") or 0),
                   username=kw.get("username"), password=kw.get("password"), connect_timeout_s=connect_timeout_s)

    async def call(self, *args: Any, timeout_s: float | None = None) -> Any:
        """The reply to one command; with ``timeout_s``, TimeoutError if it has not come by then (the line is
        closed: its state is unknown). The reply's own timer, one per call: ``asyncio.timeout`` around the call
        cost a task lookup, two running-loop lookups (a ``getpid`` each on Python 3.11) and a context object."""
        line = self._line
        if line is None or line.closed:
            return await self._send(await self._connect(), args, timeout_s)
        try:
            return await self._send(line, args, timeout_s)
        except RedisConnectionError:  # the kept line broke under this call: once more, on a new one
            return await self._send(await self._connect(), args, timeout_s)

    async def _send(self, line: _Line, args: tuple[Any, ...], timeout_s: float | None = None) -> Any:
        waiter: asyncio.Future[Any] = line.loop.create_future()
        line.pending.append(waiter)
        line.transport.write(_command(args))  # type: ignore[union-attr]
        timer = None if timeout_s is None else line.loop.call_later(timeout_s, _expire, line, waiter, timeout_s)
        try:
            reply = await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():  # no reply yet: it would still come, out of step
                line.close(RedisConnectionError("a call was abandoned while its reply was pending"))
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if isinstance(reply, ResponseError):
            if str(reply).startswith("NOSCRIPT"):
                raise NoScriptError(str(reply))
            raise reply
        return reply

    async def _connect(self) -> _Line:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect at a time; callers that waited use the line it made
            if self._line is not None and not self._line.closed:
                return self._line
            loop = asyncio.get_running_loop()
            line: _Line | None = None
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    _, line = await loop.create_connection(_Line, self.host, self.port)
                    hello: list[tuple[Any, ...]] = []
                    if self.password is not None:
                        hello.append(("AUTH", self.username, self.password) if self.username else
                                     ("AUTH", self.password))
                    if self.db:
                        hello.append(("SELECT", self.db))
                    for command in hello:
                        await self._send(line, command)
            except BaseException as exc:
                if line is not None and not line.closed:
                    line.close(RedisConnectionError("connect failed"))
                if isinstance(exc, TimeoutError):  # (an OSError too)
                    raise RedisConnectionError(f"connecting to redis at {self.host}:{self.port} timed out") from exc
                if isinstance(exc, OSError):
                    raise RedisConnectionError(f"cannot connect to redis at {self.host}:{self.port}: {exc}") from exc
                raise
            self._line = line
            return line

    async def aclose(self) -> None:
        if self._line is not None and not self._line.closed:
            self._line.close(RedisConnectionError("closed"))
        self._line = None

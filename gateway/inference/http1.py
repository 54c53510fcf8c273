"""A lean HTTP/1.1 client for one upstream base URL: the request path of the OpenAI-compatible backend.

Why not aiohttp here: on the gateway's hot path its ``ClientSession`` cost ~180-210 µs of CPU per request
(request and response objects, header multidicts, timer and tracing hooks) and one Python call per HTTP chunk of
a stream (a 1,000-event SSE answer is 1,000 chunks); this client costs ~70 µs per request, measured side by side
against the same mock (``python -m bench.upstream_client``; bench/RESULTS.md), and collects a stream's chunks in C. The
parsing is not ours: httptools (llhttp, the parser uvicorn serves with) frames the responses (Content-Length,
chunked, or until the connection closes).

What it does: keep-alive connections pooled per event loop (LIFO, dropped after ``keepalive_s`` idle or when the
server closed them), at most ``max_connections`` at once (waiting for one counts against the connect timeout),
http and https (system trust store), Basic credentials in the URL, no redirects, no cookies, no proxies from the
environment, the W3C ``traceparent`` of the current span when tracing is on. A response read to its end gives
its connection back; one closed early closes its connection, so the upstream sees the client go and stops
generating.

Errors: :class:`UpstreamConnectError` when no connection could be made (refused, unreachable, DNS: nothing was
sent, another endpoint may take the request); ``TimeoutError`` for the connect timeout; any other ``OSError``
(reset, closed mid-answer) or :class:`UpstreamProtocolError` once something was sent.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
import time
from urllib.parse import unquote, urlsplit

import httptools

from gateway.observability import tracing

#: a stream's unread body above this pauses reading from the socket (back-pressure to the upstream)
_HIGH_WATER = 1 << 20


class UpstreamConnectError(OSError):
    """No connection could be made: nothing was sent."""


class UpstreamProtocolError(OSError):
    """The upstream's bytes are not HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.on_body = self.chunks.append  # llhttp calls it per body piece: no Python frame of ours
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.headers_done = False
        self.complete = False
        self.keep_alive = False  # the response just read lets the connection serve another
        self.received = False  # any byte of the current response
        self.framed = False  # Content-Length or chunked: the end is in the bytes, not the close
        self.error: BaseException | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0

    # -------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamProtocolError(f"not HTTP/1.1 ({exc})")
            self.transport.close()  # type: ignore[union-attr]
        if self.chunks:
            self.buffered += len(data)
            if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if self.headers_done and not self.framed and exc is None:
                self.complete = True  # a body that runs until the connection closes
            elif self.error is None:
                self.error = exc or ConnectionResetError("the upstream closed the connection")
        self._wake()

    # -------------------------------------------------------------- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # read now: llhttp resets it for the next message

    # -------------------------------------------------------------- used by Http1Client / Http1Response
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    def begin(self) -> None:
        """Ready for the next response on this connection."""
        self.parser = httptools.HttpResponseParser(self)
        self.headers_done = self.complete = self.framed = self.keep_alive = self.received = False
        self.error = None

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()  # the same list: ``on_body`` stays bound to it
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Response:
    """A response whose headers have arrived; read the body with ``read`` or ``readany``, then ``release``."""

    __slots__ = ("status", "_conn", "_client", "_slots", "_done")

    def __init__(self, status: int, conn: _Connection, client: Http1Client, slots: asyncio.Semaphore) -> None:
        self.status = status
        self._conn = conn
        self._client = client
        self._slots = slots  # the pool slot this response holds until it is released or closed
        self._done = False

    async def readany(self) -> bytes:
        """What arrived since the last read (waiting for something); ``b""`` at the end of the body. Bytes that
        arrived before the connection broke are returned before its error is raised."""
        conn = self._conn
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    async def read(self) -> bytes:
        parts = []
        while part := await self.readany():
            parts.append(part)
        return b"".join(parts)

    def at_eof(self) -> bool:
        return self._conn.complete and not self._conn.chunks

    def release(self) -> None:
        """The connection goes back to the pool if the body was read to its end, else it is closed."""
        self._finish(reuse=self.at_eof())

    def close(self) -> None:
        """Close the connection (the upstream sees the client go)."""
        self._finish(reuse=False)

    def _finish(self, *, reuse: bool) -> None:
        if not self._done:
            self._done = True
            self._client._give_back(self._conn, reuse=reuse)
            self._slots.release()


class Http1Client:
    """Requests to one origin (``http(s)://host[:port]``; a path in the URL is ignored: requests name theirs in
    full) over pooled keep-alive connections."""

    def __init__(self, base_url: str, *, headers: dict[str, str], connect_timeout_s: float, max_connections: int,
                 keepalive_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.headers = dict(headers)
        if parts.username is not None and "Authorization" not in self.headers:  # http://user:pass@host: Basic
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(creds).decode("ascii")
        fixed = {"Host": host if default_port else f"{host}:{self.port}", "User-Agent": "palisade-gateway",
                 **self.headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_connections = max(1, max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def open(self) -> bool:
        """Used since it was made or last closed."""
        return self._loop is not None

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      content_type: str | None = None) -> Http1Response:
        """Send the request and wait for the response's headers (the caller bounds that wait)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections belong to the loop that made them
            self._idle.clear()
            self._slots = asyncio.Semaphore(self.max_connections)
            self._loop = loop
        slots = self._slots
        assert slots is not None
        if slots.locked():  # all connections busy: wait for one, within the connect timeout
            async with asyncio.timeout(self.connect_timeout_s):
                await slots.acquire()
        else:
            await slots.acquire()  # free: returns at once (no timer armed on the usual path)
        try:
            head = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._fixed]
            if body is not None:
                head.append(b"Content-Length: %d\r\n" % len(body))
                if content_type:
                    head.append(f"Content-Type: {content_type}\r\n".encode("latin-1"))
            if tracing.enabled():
                head.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in tracing.inject({}).items())
            head.append(b"\r\n")
            if body:
                head.append(body)
            raw = b"".join(head)
            while True:
                pooled = self._pooled()
                conn = pooled or await self._connect()
                conn.begin()
                conn.transport.write(raw)  # type: ignore[union-attr]
                try:
                    while not conn.headers_done:
                        if conn.error is not None:
                            raise conn.error
                        if conn.closed:
                            raise ConnectionResetError("the upstream closed the connection")
                        await conn.wait()
                except ConnectionError:
                    conn.close()
                    if pooled is not None and not conn.received:
                        continue  # a kept-alive connection the server had just closed: once more, on a new one
                    raise
                except BaseException:
                    conn.close()
                    raise
                return Http1Response(conn.parser.get_status_code(), conn, self, slots)
        except BaseException:
            slots.release()
            raise

    def _pooled(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed by the server
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl)
        except TimeoutError:  # an OSError too, but the connect timeout is reported as a timeout
            raise
        except OSError as exc:  # refused, unreachable, name not found, TLS handshake refused
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port} ({exc})") from exc
        return conn

    def _give_back(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and self._loop is not None and not conn.closed and conn.keep_alive:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        """Close the idle connections; one still answering closes when it is given back."""
        self._loop = None
        while self._idle:
            self._idle.pop().close()

"""The lean HTTP/1.1 upstream client (gateway.inference.http1) against real sockets: raw asyncio servers that
answer exactly the bytes each test needs (framing, keep-alive, closes, garbage)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.inference.http1 import Http1Client, UpstreamConnectError, UpstreamProtocolError
from tests.support.server import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server running ``handler`` per connection; yields its URL and a list that counts connections."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", connections
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


def client(url: str, **kw: object) -> Http1Client:
    opts: dict = {"headers": {"Accept": "application/json"}, "connect_timeout_s": 2.0, "max_connections": 8,
                  "keepalive_s": 4.0, **kw}
    return Http1Client(url, **opts)


async def test_keep_alive_reuses_one_connection_and_sends_what_it_should() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()

    async with raw_server(handler) as (url, connections):
        c = client(url, headers={"Authorization": "Bearer k"})
        for _ in range(3):
            resp = await c.request("POST", "/v1/chat/completions", b'{"a":1}', content_type="application/json")
            assert resp.status == 200 and await resp.read() == b"hello"
            resp.release()
        await c.close()
    assert len(connections) == 1
    first = seen[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    for header in (b"Host: 127.0.0.1:", b"Authorization: Bearer k\r\n", b"Content-Length: 7\r\n",
                   b"Content-Type: application/json\r\n"):
        assert header in first
    assert first.endswith(b'\r\n\r\n{"a":1}') and b"Cookie" not in first


async def test_chunked_and_close_delimited_bodies() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await read_request(reader)
        if b"/chunked" in req:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        else:  # no length: the body runs until the connection closes
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with raw_server(handler) as (url, _):
        c = client(url)
        resp = await c.request("GET", "/chunked")
        assert await resp.read() == b"abcde" and resp.at_eof()
        resp.release()
        # the server closed the kept-alive connection right after its answer: a request that meets that close
        # before any byte of an answer goes once more, on a new connection
        resp = await c.request("GET", "/close")
        assert await resp.read() == b"until the end"
        resp.release()
        await c.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # then close (the server's idle timeout, at once)

    async with raw_server(handler) as (url, connections):
        c = client(url)
        for _ in range(3):
            resp = await c.request("GET", "/x")
            assert await resp.read() == b"ok"
            resp.release()
            await asyncio.sleep(0.05)  # the close arrives
        await c.close()
    assert len(connections) == 3


async def test_bytes_before_a_broken_connection_are_read_before_its_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        writer.transport.abort()

    async with raw_server(handler) as (url, _):
        c = client(url)
        resp = await c.request("POST", "/stream", b"{}")
        got = b""
        with pytest.raises(OSError):
            while part := await resp.readany():
                got += part
        assert got == b"first"
        resp.close()
        await c.close()


async def test_at_most_max_connections_at_once() -> None:
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            await gate.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_server(handler) as (url, connections):
        c = client(url, max_connections=1, connect_timeout_s=0.3)
        first = asyncio.ensure_future(c.request("GET", "/a"))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):  # waiting for a free connection counts against the connect timeout
            await c.request("GET", "/b")
        gate.set()
        resp = await first
        assert await resp.read() == b"ok"
        resp.release()
        resp = await c.request("GET", "/c")  # the slot came back with the connection
        assert await resp.read() == b"ok"
        resp.release()
        await c.close()
    assert len(connections) == 1


async def test_refused_garbage_and_early_close() -> None:
    c = client(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(UpstreamConnectError):
        await c.request("GET", "/x")

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with raw_server(garbage) as (url, _):
        with pytest.raises(UpstreamProtocolError):
            await client(url).request("GET", "/x")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(hang_up) as (url, _):
        with pytest.raises(ConnectionResetError):
            await client(url).request("GET", "/x")


async def test_credentials_in_the_url_become_basic_auth_unless_a_key_is_set() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as (url, _):
        with_creds = url.replace("http://", "http://svc:p%40ss@")
        for c in (client(with_creds), client(with_creds, headers={"Authorization": "Bearer k"})):
            resp = await c.request("GET", "/v1/models")
            await resp.read()
            resp.release()
            await c.close()
    assert b"Authorization: Basic c3ZjOnBAc3M=\r\n" in seen[0]  # svc:p@ss
    assert b"Authorization: Bearer k\r\n" in seen[1] and b"Basic" not in seen[1]

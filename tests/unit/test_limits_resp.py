"""The limiter's pipelined line to Redis (gateway.limits.resp) against the real Redis: replies in order under
concurrency, errors as redis-py raises them, and what happens when the line breaks or a call is abandoned."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.limits.resp import RespPipe
from tests.conftest import REDIS_TEST_URL

pytestmark = [pytest.mark.redis, pytest.mark.asyncio(loop_scope="session")]


async def test_concurrent_calls_share_the_line_and_each_gets_its_own_reply() -> None:
    pipe = RespPipe.for_url(REDIS_TEST_URL)
    try:
        values = [secrets.token_hex(4) * (i % 50 + 1) for i in range(300)]  # replies of many sizes
        replies = await asyncio.gather(*(pipe.call("ECHO", v) for v in values))
        assert replies == [v.encode() for v in values]
        key = f"resp:test:{secrets.token_hex(4)}"
        counts = await asyncio.gather(*(pipe.call("INCR", key) for _ in range(100)))
        assert sorted(counts) == list(range(1, 101)) and counts == sorted(counts)  # in the order sent
    finally:
        await pipe.aclose()


async def test_the_url_selects_the_database() -> None:
    pipe = RespPipe.for_url(REDIS_TEST_URL)  # .../9
    client = aioredis.from_url(REDIS_TEST_URL)
    key = f"resp:test:{secrets.token_hex(4)}"
    try:
        assert await pipe.call("SET", key, "x") == b"OK"
        assert await client.get(key) == b"x"
    finally:
        await client.delete(key)
        await client.aclose()
        await pipe.aclose()


async def test_error_replies_raise_as_redis_py_raises_them() -> None:
    pipe = RespPipe.for_url(REDIS_TEST_URL)
    try:
        with pytest.raises(NoScriptError):
            await pipe.call("EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError, match="unknown command"):
            await pipe.call("NO-SUCH-COMMAND")
        assert await pipe.call("PING") == b"PONG"  # the line is still in step after error replies
    finally:
        await pipe.aclose()


async def test_a_line_the_server_closed_is_replaced_on_the_next_call() -> None:
    pipe = RespPipe.for_url(REDIS_TEST_URL)
    admin = aioredis.from_url(REDIS_TEST_URL)
    try:
        client_id = await pipe.call("CLIENT", "ID")
        first = pipe._line
        assert await admin.execute_command("CLIENT", "KILL", "ID", client_id) == 1
        await asyncio.sleep(0.05)  # (the close may or may not have been seen yet: both must work)
        assert await pipe.call("PING") == b"PONG"
        assert pipe._line is not first
    finally:
        await admin.aclose()
        await pipe.aclose()


async def test_an_abandoned_call_closes_the_line_so_no_later_call_gets_its_reply() -> None:
    pipe = RespPipe.for_url(REDIS_TEST_URL)
    try:
        slow = asyncio.ensure_future(pipe.call("BLPOP", f"resp:empty:{secrets.token_hex(4)}", 1))
        await asyncio.sleep(0.1)
        line = pipe._line
        slow.cancel()  # as the limiter's timeout does
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert line.closed
        assert await pipe.call("ECHO", "mine") == b"mine"  # not the abandoned BLPOP's nil
    finally:
        await pipe.aclose()


async def test_a_call_past_its_timeout_raises_timeout_and_closes_the_line() -> None:
    """The limiter's deadline on a script call: TimeoutError for the late call (what the limiter fails closed on);
    the line is closed, so a call queued behind it on the kept line is tried once more on a new one."""
    pipe = RespPipe.for_url(REDIS_TEST_URL)
    try:
        assert await pipe.call("PING") == b"PONG"  # a kept line
        empty = f"resp:empty:{secrets.token_hex(4)}"
        late = asyncio.ensure_future(pipe.call("BLPOP", empty, 2, timeout_s=0.2))
        behind = asyncio.ensure_future(pipe.call("ECHO", "behind"))  # queued behind the late reply
        await asyncio.sleep(0.05)
        line = pipe._line
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await late
        assert 0.1 < asyncio.get_running_loop().time() - started < 1.0  # its own timer, not the BLPOP's 2 s
        assert await behind == b"behind" and line.closed
        assert await pipe.call("ECHO", "mine", timeout_s=5) == b"mine"
        assert pipe._line is not line and not pipe._line.pending  # the timer of an answered call was cancelled
    finally:
        await pipe.aclose()


async def test_no_redis_is_a_connection_error_and_other_schemes_keep_redis_py() -> None:
    pipe = RespPipe("127.0.0.1", 1, connect_timeout_s=1)
    with pytest.raises(RedisConnectionError):
        await pipe.call("PING")
    assert RespPipe.for_url("rediss://cache:6380/0") is None and RespPipe.for_url("unix:///run/redis.sock") is None
    auth = RespPipe.for_url("redis://app:s%40cret@cache:6390/3")
    assert (auth.host, auth.port, auth.db, auth.username, auth.password) == ("cache", 6390, 3, "app", "s@cret")
    # the database as redis-py reads it, from the path or the query: the scripts and the usage reads agree
    assert RespPipe.for_url("redis://cache?db=5").db == 5 and RespPipe.for_url("redis://cache").db == 0

"""The per-IP login slowdown, switched on (every other test configuration turns it off).

After ``login_slowdown_after`` failed logins from one address, each further attempt from that address waits
longer (0.25 s, 0.5 s, 1 s, 2 s, ... capped at 5 s) before the password is even checked, right password or not
(no timing oracle); other addresses are not slowed. With Redis the count is shared by every replica.
"""

from __future__ import annotations

import time

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.authn.throttle import IpThrottle
from tests.integration.test_identity_helpers import BASE_URL, PASSWORD, gateway_client, identity_settings, make_person
from tests.support.fake_upstreams import fake_upstream

pytestmark = pytest.mark.asyncio(loop_scope="session")

FREE = 2
ATTACKER, BYSTANDER = "192.0.2.66", "198.51.100.7"


@pytest.fixture(scope="module")
async def gw(tmp_path_factory):
    with fake_upstream("ok", "openai") as upstream:
        settings = identity_settings(tmp_path_factory.mktemp("slowdown"), upstream, login_slowdown_after=FREE)
        async with gateway_client(settings) as (client, app):
            yield app


def client_from(app, ip: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url=BASE_URL)


async def timed_login(c: httpx.AsyncClient, username: str, password: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = await c.post("/auth/login", json={"username": username, "password": password})
    return r.status_code, time.perf_counter() - t0


async def test_failures_from_one_address_slow_that_address_only(gw) -> None:
    person = await make_person(gw, "viewer")
    async with client_from(gw, ATTACKER) as attacker, client_from(gw, BYSTANDER) as bystander:
        attempts = [await timed_login(attacker, f"nobody{i}", "wrong password 123") for i in range(FREE + 3)]
        assert [s for s, _ in attempts] == [401] * (FREE + 3)
        # the (FREE+1)th attempt onwards waits 0.25 s, 0.5 s, 1 s before answering
        for n, (_, elapsed) in enumerate(attempts[FREE:]):
            assert elapsed >= 0.25 * 2**n, (n, [round(e, 2) for _, e in attempts])
        # the right password from the same address is slowed too (the wait comes before the check)
        status, slowed = await timed_login(attacker, person.username, PASSWORD)
        assert status == 200 and slowed >= 2.0
        # another address is not slowed (its count is zero; timing alone would be at the mercy of argon2's cost)
        assert await gw.state.services.identity.throttle.failures(BYSTANDER) == 0
        status, elapsed = await timed_login(bystander, person.username, PASSWORD)
        assert status == 200 and elapsed < slowed


@pytest.mark.redis
async def test_with_redis_replicas_share_the_count(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/7"
    one, two = aioredis.from_url(url), aioredis.from_url(url)
    try:
        await one.delete(f"palisade:login-fail:{ATTACKER}")
        a, b = IpThrottle(free=FREE, redis=one), IpThrottle(free=FREE, redis=two)
        for _ in range(FREE + 1):
            await a.fail(ATTACKER)
        assert await b.failures(ATTACKER) == FREE + 1
        assert await b.failures(BYSTANDER) == 0
        t0 = time.perf_counter()
        assert await b.wait(ATTACKER) == 0.5
        assert time.perf_counter() - t0 >= 0.5
        assert 0 < await one.ttl(f"palisade:login-fail:{ATTACKER}") <= 900
    finally:
        await one.delete(f"palisade:login-fail:{ATTACKER}")
        await one.aclose()
        await two.aclose()

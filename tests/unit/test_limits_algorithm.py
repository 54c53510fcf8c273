"""The limiter algorithm, in Redis (Lua, real Redis db 9) and in memory (embedded mode): same cases, same results."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.authn.principal import Principal
from gateway.errors import Forbidden, RateLimited, ServiceUnavailable
from gateway.limits.config import LimitsConfig
from gateway.limits.limiter import RateLimiter
from gateway.limits.resp import RespPipe
from gateway.settings import Settings
from tests.conftest import REDIS_TEST_URL

pytestmark = pytest.mark.asyncio(loop_scope="session")


def settings(**kw) -> Settings:
    return Settings(data_dir=Path("/tmp"), database_url="sqlite:///:memory:", **kw)


@pytest.fixture(params=["memory", "redis", "redis-line"])
async def make(request):
    """The in-memory buckets, Redis through redis-py, and Redis through the limiter's own pipelined line
    (gateway.limits.resp, what the gateway uses for ``redis://`` URLs): same cases, same results."""
    made = []

    def factory(rules: dict | None = None, **kw) -> RateLimiter:
        config = LimitsConfig(settings(**kw))
        config.snapshot.rules.update(rules or {})
        client = fast = None
        if request.param != "memory":
            client = aioredis.from_url(REDIS_TEST_URL)
        if request.param == "redis-line":
            fast = RespPipe.for_url(REDIS_TEST_URL)
        lim = RateLimiter(config, redis=client, fast=fast, owns_client=True)
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        await lim.close()


def app(**attrs) -> Principal:
    return Principal(f"key:{secrets.token_hex(6)}", "app", "t", "api_key", roles=("app",), attributes=attrs)


async def test_requests_per_minute_then_429_with_headers(make) -> None:
    lim = make(limit_requests_per_min=3)
    p = app()
    for _ in range(3):
        await lim.settle(await lim.reserve(p, "m", 1), 1)
    with pytest.raises(RateLimited) as exc:
        await lim.reserve(p, "m", 1)
    err = exc.value
    assert err.status_code == 429 and err.code == "requests_per_minute"
    assert int(err.headers["Retry-After"]) >= 1
    assert err.headers["RateLimit-Policy"] == '"principal.requests_per_minute";q=3;w=60'
    assert err.headers["RateLimit"].startswith('"principal.requests_per_minute";r=0;t=')
    assert err.extra["limit"]["name"] == "requests_per_minute"


async def test_tokens_reserved_then_refunded_on_settle(make) -> None:
    lim = make(limit_tokens_per_min=1000)
    p = app()
    first = await lim.reserve(p, "m", 600)
    with pytest.raises(RateLimited) as exc:
        await lim.reserve(p, "m", 600)
    assert exc.value.code == "tokens_per_minute"
    await lim.settle(first, 100)  # 500 unused tokens come back
    second = await lim.reserve(p, "m", 600)
    await lim.settle(second, 600)


async def test_concurrency_slots_are_released_by_settle(make) -> None:
    lim = make(limit_concurrency=2)
    p = app()
    a, b = await lim.reserve(p, "m", 1), await lim.reserve(p, "m", 1)
    with pytest.raises(RateLimited) as exc:
        await lim.reserve(p, "m", 1)
    assert exc.value.code == "concurrency"
    await lim.settle(a, 1)
    await lim.settle(a, 1)  # settling twice must not free a second slot
    c = await lim.reserve(p, "m", 1)
    with pytest.raises(RateLimited):
        await lim.reserve(p, "m", 1)
    await lim.settle(b, 1)
    await lim.settle(c, 1)


async def test_daily_quota_and_department_and_model_scopes(make) -> None:
    dept, model = f"sales-{secrets.token_hex(4)}", f"big-{secrets.token_hex(4)}"
    lim = make(
        {("department", dept): {"daily_tokens": 100}, ("model", model): {"requests_per_min": 1}},
        limit_daily_tokens=1000,
    )
    seller = app(department=dept)
    await lim.reserve(seller, "m", 80)
    with pytest.raises(RateLimited) as exc:
        await lim.reserve(seller, "m", 30)
    assert exc.value.code == "daily_tokens" and exc.value.extra["limit"]["scope"] == "department"
    assert f"department '{dept}'" in exc.value.message
    await lim.reserve(app(), model, 1)
    with pytest.raises(RateLimited) as exc:
        await lim.reserve(app(), model, 1)  # the model's limit is shared by every caller
    assert exc.value.extra["limit"]["scope"] == "model"


async def test_suspended_principal_is_refused(make) -> None:
    lim = make()
    p = app()
    lim.config.snapshot.suspended[p.id] = "usage spike"
    with pytest.raises(Forbidden):
        await lim.reserve(p, "m", 1)


async def test_redis_down_fails_closed_unless_fail_open() -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    lim = RateLimiter(LimitsConfig(settings()), redis=dead)
    with pytest.raises(ServiceUnavailable):
        await lim.reserve(app(), "m", 1)
    lim.config.snapshot.options["limits.fail_open"] = True
    res = await lim.reserve(app(), "m", 1)
    await lim.settle(res, 1)  # nothing was charged: settle is a no-op, not an error
    await dead.aclose()


async def test_a_success_carries_ratelimit_headers_for_every_windowed_limit(make) -> None:
    lim = make(limit_requests_per_min=10, limit_tokens_per_min=1000, limit_concurrency=5, limit_daily_tokens=5000)
    p = app()
    first = (await lim.reserve(p, "m", 100)).headers()
    second = await lim.reserve(p, "m", 100)
    headers = second.headers()
    assert headers["ratelimit-policy"] == (
        '"principal.requests_per_minute";q=10;w=60, "principal.tokens_per_minute";q=1000;w=60, '
        '"principal.daily_tokens";q=5000;w=86400'
    )
    states = dict(item.split(";", 1) for item in headers["ratelimit"].split(", "))
    # after two requests of 100 tokens: 8 requests, 800 tokens/min and 4800 tokens today are left
    assert states['"principal.requests_per_minute"'].startswith("r=8;t=")
    assert states['"principal.tokens_per_minute"'].startswith("r=800;t=")
    assert states['"principal.daily_tokens"'].startswith("r=4800;t=")
    assert 0 < int(states['"principal.daily_tokens"'].split("t=")[1]) <= 86400
    assert "concurrency" not in headers["ratelimit-policy"]  # not a quota over a window
    assert first  # the first reservation's headers were there too


async def test_released_settles_reach_the_store_before_the_next_reserve(make) -> None:
    """``release`` does not wait (the answer leaves first), yet a caller who sends one request after another is
    never refused by its own previous request: a reserve waits for what was released before it."""
    lim = make(limit_concurrency=1, limit_tokens_per_min=1000)
    p = app()
    for _ in range(5):
        lim.release(await lim.reserve(p, "m", 900), 10)  # 890 unused tokens and the one slot come back
    await lim.close()


async def test_many_releases_settle_in_batches_with_the_same_result(make) -> None:
    lim = make(limit_concurrency=300, limit_tokens_per_min=300 * 100, limit_daily_tokens=10**6)
    p = app()
    held = [await lim.reserve(p, "m", 100) for _ in range(300)]
    with pytest.raises(RateLimited) as exc:
        await lim.reserve(p, "m", 100)
    assert exc.value.code in ("concurrency", "tokens_per_minute")
    for i, res in enumerate(held):  # more than one batch, all queued behind each other
        lim.release(res, 40)
        if i == 10:
            lim.release(res, 40)  # twice: no second refund
    await lim.close()
    used = (await lim.usage(p, "m"))["scopes"][0]["used"]
    assert used["concurrent"] == 0
    assert used["daily_tokens"] == 300 * 40
    assert abs(used["tokens_in_window"] - 300 * 40) <= 300  # less what the window drained since


async def test_a_failed_release_is_counted_not_raised() -> None:
    from gateway.limits.limiter import LIMITER_ERRORS

    client = aioredis.from_url(REDIS_TEST_URL)
    lim = RateLimiter(LimitsConfig(settings(limit_concurrency=5)), redis=client)
    res = await lim.reserve(app(), "m", 1)
    await client.aclose()
    lim.redis = lim._settle.redis = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.3)
    before = LIMITER_ERRORS.labels("settle_failed")._value.get()
    lim.release(res, 1)
    await lim.close()
    assert LIMITER_ERRORS.labels("settle_failed")._value.get() == before + 1
    await lim.redis.aclose()


async def test_a_reserve_carries_the_settles_released_before_it_in_one_script_call() -> None:
    """Under load a released settle rides with the next reserve (settles first, same script): one round trip per
    request instead of two, with the same state in Redis as sending them apart, even when that reserve is refused."""
    client = aioredis.from_url(REDIS_TEST_URL)
    lim = RateLimiter(LimitsConfig(settings(limit_concurrency=1, limit_tokens_per_min=1000, limit_daily_tokens=10**6)),
                      redis=client)
    calls: list[str] = []

    class Counted:
        def __init__(self, name: str, script) -> None:
            self.name, self.script = name, script

        async def __call__(self, keys, args):
            calls.append(self.name)
            return await self.script(keys, args)

    lim._reserve = Counted("reserve", lim._reserve)  # type: ignore[method-assign]
    lim._settle = Counted("settle", lim._settle)  # type: ignore[method-assign]
    lim._settle_reserve = Counted("settle+reserve", lim._settle_reserve)  # type: ignore[method-assign]
    p = app()
    for _ in range(5):  # concurrency 1: each reserve succeeds only because the previous settle came first
        lim.release(await lim.reserve(p, "m", 900), 10)
    assert calls == ["reserve"] + ["settle+reserve"] * 4
    with pytest.raises(RateLimited) as exc:  # refused (more than a minute's tokens), yet it carried the settle
        await lim.reserve(p, "m", 5000)
    assert exc.value.code == "tokens_per_minute"
    assert calls[-1] == "settle+reserve" and not lim._released
    used = (await lim.usage(p, "m"))["scopes"][0]["used"]
    assert used["concurrent"] == 0 and used["daily_tokens"] == 50
    assert 0 < used["tokens_in_window"] <= 50
    assert "settle" not in calls  # nothing was left to send on its own
    lim.release(await lim.reserve(p, "m", 1), 1)
    await lim.close()  # the last release had no reserve after it: sent on its own
    assert calls[-2:] == ["reserve", "settle"]
    await client.aclose()

"""Limits through a real `palisade serve` on Postgres + Redis in front of a slow fake upstream (4 slots):
load shedding by priority, RateLimit headers on successful answers (also before an SSE stream starts), and an
admin changing a principal's limits through /admin/limits with the change taking effect."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.integration.test_authz_routes import login
from tests.support.fake_upstreams import FakeServer, serve_fake
from tests.support.server import GatewayProcess, base_env, cli
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SLOTS = 4  # the model's max_concurrency; low priority is shed from 3 busy slots (0.75), normal from 4


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str
) -> Iterator[tuple[GatewayProcess, dict, FakeServer]]:
    tmp = tmp_path_factory.mktemp("limits-shed")
    with serve_fake("slow", "openai", token_delay=0.01) as upstream:
        models = tmp / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
            f"    upstream_model: fake-model\n    max_concurrency: {SLOTS}\n"
        )
        env = base_env(
            tmp,
            PALISADE_DATABASE_URL=pg_url,
            PALISADE_REDIS_URL=redis_url,
            PALISADE_MODELS_FILE=str(models),
            PALISADE_POLICY_CHECK_INTERVAL_S="0.2",
        )
        cli(env, "migrate")
        gw = GatewayProcess(env, tmp / "gw.log").start()
        try:
            yield gw, env, upstream
        finally:
            gw.stop()


@pytest.fixture(scope="module")
def admin(gateway) -> tuple[dict[str, str], str]:
    """Session headers (cookie + CSRF) of a person with the admin role, just logged in with TOTP (fresh MFA)."""
    gw, env, _ = gateway
    return login(gw, env, "admin")


def new_key(gw: GatewayProcess, admin: tuple[dict[str, str], str], name: str) -> tuple[str, str]:
    """An API key made by the admin over the API (quicker than a CLI process per key): (key, principal id)."""
    r = httpx.post(gw.url + "/admin/keys", headers=admin[0], json={"name": name}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"], "key:" + r.json()["id"]


def chat(max_tokens: int = 8) -> dict:
    return {"model": "mock", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": max_tokens}


def shed_count(gw: GatewayProcess, priority: int) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    m = re.search(rf'^palisade_load_shed_total\{{model="mock",priority="{priority}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


MARKER_RPM = 100_000


def applied(gw: GatewayProcess, pid: str, headers: dict[str, str], rpm: int) -> None:
    """Wait until the gateway enforces ``rpm`` for ``pid`` (its own view, GET /v1/limits/{pid})."""

    def now() -> int | None:
        r = httpx.get(f"{gw.url}/v1/limits/{pid}", headers=headers, timeout=10)
        return next(s["limits"]["requests_per_min"] for s in r.json()["scopes"] if s["scope"] == "principal")

    wait_until(lambda: now() == rpm, timeout=10, what=f"the gateway to apply rpm={rpm} to {pid}")


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_saturated_backend_sheds_lower_priority_principals_first(gateway, admin) -> None:
    gw, env, upstream = gateway
    (low, low_id), (normal, _), (high, high_id) = (new_key(gw, admin, f"shed-{p}") for p in ("low", "normal", "high"))
    # with the priority, a marker limit (no effect here): priorities and limits arrive in one snapshot, so once
    # the gateway shows the marker it applies the priority too
    cli(env, "limits", "set", "principal", low_id, "--priority", "0", "--rpm", str(MARKER_RPM))
    cli(env, "limits", "set", "principal", high_id, "--priority", "2", "--rpm", str(MARKER_RPM))
    # normal: an app's default priority (1), nothing set
    auth = {name: {"Authorization": f"Bearer {k}"} for name, k in (("low", low), ("normal", normal), ("high", high))}
    shed_before = shed_count(gw, 0), shed_count(gw, 1)
    for pid, headers in ((low_id, auth["low"]), (high_id, auth["high"])):
        applied(gw, pid, headers, MARKER_RPM)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:

            async def post(who: str) -> httpx.Response:
                return await c.post("/v1/chat/completions", json=chat(), headers=auth[who])

            # idle backend: everybody is served
            for who in auth:
                r = await post(who)
                assert r.status_code == 200, (who, r.text)

            # 3 of 4 slots busy (each answer takes 4 tokens x 0.5 s): low is refused, normal still served
            upstream.app.token_delay = 0.5
            holders = [asyncio.create_task(post("high")) for _ in range(SLOTS - 1)]
            await _until(lambda: upstream.stats.active == SLOTS - 1)
            upstream.app.token_delay = 0.01  # what comes next is quick once it has a slot
            refused = await post("low")
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"].isdigit()
            err = refused.json()["error"]
            assert err["type"] == "service_unavailable" and err["code"] == "load_shed"
            assert (await post("normal")).status_code == 200

            # every slot busy: low and normal are refused, high waits in the router's queue and is served
            upstream.app.token_delay = 0.5
            holders.append(asyncio.create_task(post("high")))
            await _until(lambda: upstream.stats.active == SLOTS)
            upstream.app.token_delay = 0.01
            for who in ("low", "normal"):
                r = await post(who)
                assert r.status_code == 503 and r.json()["error"]["code"] == "load_shed", (who, r.text)
                assert "Retry-After" in r.headers
            started = time.monotonic()
            served = await post("high")
            assert served.status_code == 200, served.text
            assert time.monotonic() - started > 0.5  # it queued until a holder finished
            assert all(r.status_code == 200 for r in await asyncio.gather(*holders))

            # load gone: low priority is served again
            await _until(lambda: upstream.stats.active == 0)
            assert (await post("low")).status_code == 200

    asyncio.run(run())
    assert shed_count(gw, 0) >= shed_before[0] + 2
    assert shed_count(gw, 1) >= shed_before[1] + 1


def parse_list(value: str) -> dict[str, dict[str, int]]:
    """A structured-field list of ``"name";k=v;k=v`` items (RateLimit / RateLimit-Policy) -> {name: {k: v}}."""
    out = {}
    for item in value.split(", "):
        name, *params = item.split(";")
        out[name.strip('"')] = {k: int(v) for k, v in (p.split("=") for p in params)}
    return out


def test_admin_sets_limits_through_the_api_and_successes_carry_ratelimit_headers(gateway, admin) -> None:
    gw, env, _ = gateway
    admin, admin_id = admin
    key, pid = new_key(gw, (admin, admin_id), "headers-app")

    put = httpx.put(
        f"{gw.url}/admin/limits/principal/{pid}",
        headers=admin,
        json={"requests_per_min": 3, "tokens_per_min": 600, "daily_tokens": 5000},
        timeout=10,
    )
    assert put.status_code == 200, put.text
    assert put.json()["updated_by"] == admin_id and put.json()["requests_per_min"] == 3
    overview = httpx.get(gw.url + "/admin/limits/", headers=admin, timeout=10)
    assert overview.status_code == 200 and overview.json()["mode"] == "redis"
    rule = next(r for r in overview.json()["rules"] if r["subject"] == pid)
    assert (rule["requests_per_min"], rule["tokens_per_min"], rule["daily_tokens"]) == (3, 600, 5000)
    assert rule["concurrency"] is None  # not given: inherited from the defaults
    applied(gw, pid, {"Authorization": f"Bearer {key}"}, 3)  # pub/sub (or the 0.2 s poll) carries the change

    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**chat())
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    policy = parse_list(raw.headers["RateLimit-Policy"])
    assert policy == {
        "principal.requests_per_minute": {"q": 3, "w": 60},
        "principal.tokens_per_minute": {"q": 600, "w": 60},
        "principal.daily_tokens": {"q": 5000, "w": 86400},
    }
    first = parse_list(raw.headers["RateLimit"])
    assert first["principal.requests_per_minute"]["r"] == 2
    assert 0 < first["principal.requests_per_minute"]["t"] <= 60
    reserved = 5000 - first["principal.daily_tokens"]["r"]  # prompt estimate + max_tokens
    assert 8 < reserved < 100 and 0 < first["principal.daily_tokens"]["t"] <= 86400

    # a stream: the headers are there before the first event is read
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json={**chat(), "stream": True},
        headers={"Authorization": f"Bearer {key}"}, timeout=30,
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert parse_list(stream.headers["RateLimit"])["principal.requests_per_minute"]["r"] == 1
        assert "principal.requests_per_minute" in stream.headers["RateLimit-Policy"]
        assert "data: [DONE]" in stream.read().decode()

    assert client.chat.completions.with_raw_response.create(**chat()).http_response.status_code == 200
    with pytest.raises(openai.RateLimitError) as exc:  # the admin's 3 requests per minute, in effect
        client.chat.completions.create(**chat())
    assert exc.value.response.headers["RateLimit-Policy"] == '"principal.requests_per_minute";q=3;w=60'

    # the admin lifts the rule (back to the defaults): served again at once
    gone = httpx.delete(f"{gw.url}/admin/limits/principal/{pid}", headers=admin, timeout=10)
    assert gone.status_code == 200
    applied(gw, pid, {"Authorization": f"Bearer {key}"}, 600)
    again = client.chat.completions.with_raw_response.create(**chat())
    assert parse_list(again.headers["RateLimit-Policy"])["principal.requests_per_minute"]["q"] == 600


def test_admin_limit_input_is_validated(gateway, admin) -> None:
    gw, _, _ = gateway
    admin, _ = admin
    for body in ({"requests_per_min": -1}, {"priority": 7}, {"requests_per_min": 5, "owner": "x"}):
        r = httpx.put(f"{gw.url}/admin/limits/principal/someone", headers=admin, json=body, timeout=10)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert set(r.json()) == {"error"}
    bad_scope = httpx.put(f"{gw.url}/admin/limits/galaxy/x", headers=admin, json={"concurrency": 1}, timeout=10)
    assert bad_scope.status_code == 400

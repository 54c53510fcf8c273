"""Limits through two real `palisade serve` processes sharing Postgres and a private Redis.

The token budget is checked with every request in flight at once: the fake upstream holds each admitted
request at its gate, so nothing settles before the last request was decided. A correct limiter then admits
exactly ``budget // reservation`` requests; a racy one (read, check, write in separate steps) admits nearly all
of them and fails here. Requests are split across both gateways, so the bound is the shared Redis's, not one
process's.

The Redis fault drill (stopped under traffic: 503 and the upstream never called; restarted: limits enforced
again from a clean slate) is in this module too, because it needs the private Redis.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_upstreams import FakeServer, serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key, free_port, start_all
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BUDGET = 1000
MAX_TOKENS = 40
N = 50


class PrivateRedis:
    """Our own redis-server, so a test may stop it without touching the shared one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                          capture_output=True).stdout.strip() == b"PONG",
                   timeout=10, what="redis-server to answer PING")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def shared_data_dir(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Path:
    """One data dir per test database: its local key-encryption key must match the keyring rows in Postgres,
    so every module that runs gateways on this database uses the same one (under pytest's session temp dir,
    which pytest prunes, not left in /tmp)."""
    path = tmp_path_factory.getbasetemp() / f"palisade-{pg_url.rsplit('/', 1)[1]}"
    path.mkdir(exist_ok=True)
    return path


class Deployment:
    def __init__(self, gateways: list[GatewayProcess], env: dict, redis: PrivateRedis, upstream: FakeServer):
        self.gateways, self.env, self.redis, self.upstream = gateways, env, redis, upstream


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Deployment]:
    redis = PrivateRedis().start()
    tmp = tmp_path_factory.mktemp("limits")
    with serve_fake("ok", "openai") as upstream:
        models = tmp / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
            f"    upstream_model: fake-model\n    max_concurrency: 256\n"
        )
        env = base_env(
            shared_data_dir(tmp_path_factory, pg_url),
            PALISADE_DATABASE_URL=pg_url,
            PALISADE_REDIS_URL=redis.url,
            PALISADE_MODELS_FILE=str(models),
            PALISADE_POLICY_CHECK_INTERVAL_S="0.2",
        )
        cli(env, "migrate")
        gateways = [GatewayProcess(env, tmp / f"gw{i}.log") for i in range(2)]
        try:
            start_all(gateways)
            yield Deployment(gateways, env, redis, upstream)
        finally:
            upstream.release()
            for gw in gateways:
                gw.stop()
            redis.stop()


def principal_id(env: dict, key: str) -> str:
    rows = [json.loads(line) for line in cli(env, "keys", "list").stdout.splitlines() if line.startswith("{")]
    by_prefix = {r["prefix"]: r["id"] for r in rows}
    return "key:" + by_prefix["_".join(key.split("_")[:2])]


def limits_of(gw: GatewayProcess, key: str, pid: str) -> dict:
    r = httpx.get(f"{gw.url}/v1/limits/{pid}", params={"model": "mock"},
                  headers={"Authorization": f"Bearer {key}"}, timeout=10)
    r.raise_for_status()
    return next(s for s in r.json()["scopes"] if s["scope"] == "principal")


def set_limit(d: Deployment, key: str, **limits: int) -> str:
    """Set the key's principal limits and wait until every gateway enforces them (no fixed sleep)."""
    pid = principal_id(d.env, key)
    args = []
    for name, value in limits.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    cli(d.env, "limits", "set", "principal", pid, *args)
    field = {"rpm": "requests_per_min", "daily_tokens": "daily_tokens"}
    for gw in d.gateways:
        wait_until(lambda gw=gw: all(limits_of(gw, key, pid)["limits"][field[k]] == v for k, v in limits.items()),
                   timeout=20, what=f"{gw.url} to apply {limits}")
    return pid


def chat(stream: bool = False) -> dict:
    body = {"model": "mock", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": MAX_TOKENS}
    return {**body, "stream": True} if stream else body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_budget_holds_with_every_request_in_flight_across_two_gateways(deployment: Deployment, stream: bool) -> None:
    d = deployment
    key = create_key(d.env, f"budget-{stream}")
    pid = set_limit(d, key, daily_tokens=BUDGET)
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient, url: str) -> httpx.Response:
        r = await client.post(url + "/v1/chat/completions", json=chat(stream))
        statuses.append(r.status_code)
        return r

    async def run() -> tuple[list[httpx.Response], dict]:
        limits = httpx.Limits(max_connections=N, max_keepalive_connections=N)
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}, limits=limits) as c:
            tasks = [asyncio.ensure_future(one(c, d.gateways[i % 2].url)) for i in range(N)]
            # every request is decided: admitted ones wait at the gate, refused ones came back
            while d.upstream.stats.held + len(statuses) < N:
                if any(t.done() and t.exception() for t in tasks):
                    break
                await asyncio.sleep(0.01)
            held = d.upstream.stats.held
            in_flight = limits_of(d.gateways[0], key, pid)["used"]["daily_tokens"]
            d.upstream.release()
            return await asyncio.gather(*tasks), {"held": held, "reserved": in_flight}

    before = d.upstream.stats.generations
    d.upstream.hold()
    try:
        responses, seen = asyncio.run(run())
    finally:
        d.upstream.release()
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(limited) == N, sorted(r.status_code for r in responses)
    assert seen["held"] == len(ok)  # all admitted requests were in flight together
    assert d.upstream.stats.generations - before == len(ok)  # refused ones never reached the upstream
    per_request = seen["reserved"] // len(ok)
    assert seen["reserved"] == per_request * len(ok)
    assert per_request >= MAX_TOKENS
    # exactly as many as fit: not one more (overshoot), not one fewer (a leak of reserved tokens)
    assert len(ok) == BUDGET // per_request, (len(ok), per_request)
    assert seen["reserved"] <= BUDGET
    if stream:
        assert all("data: [DONE]" in r.text for r in ok)
    body = limited[0].json()["error"]
    assert body["code"] == "daily_tokens" and body["limit"]["name"] == "daily_tokens"
    assert limited[0].headers["Retry-After"].isdigit()
    assert limited[0].headers["RateLimit-Policy"] == f'"principal.daily_tokens";q={BUDGET};w=86400'
    assert limited[0].headers["RateLimit"].startswith('"principal.daily_tokens";r=')
    # settled: the unused part of each reservation came back, the day counts only what was used
    used = sum(json.loads(r.text)["usage"]["total_tokens"] for r in ok) if not stream else None
    after = wait_until(lambda: (u := limits_of(d.gateways[1], key, pid)["used"]["daily_tokens"]) < seen["reserved"]
                       and u, timeout=10, what="the reservations to settle")
    if used is not None:
        assert after == used


def test_429_arrives_before_a_stream_starts(deployment: Deployment) -> None:
    d = deployment
    key = create_key(d.env, "streamer")
    set_limit(d, key, rpm=1)
    headers = {"Authorization": f"Bearer {key}"}
    url = d.gateways[0].url + "/v1/chat/completions"
    first = httpx.post(url, json=chat(stream=True), headers=headers, timeout=30)
    assert first.status_code == 200 and "data: [DONE]" in first.text
    before = d.upstream.stats.generations
    second = httpx.post(d.gateways[1].url + "/v1/chat/completions", json=chat(stream=True), headers=headers,
                        timeout=30)
    assert second.status_code == 429
    assert second.headers["content-type"].startswith("application/json")
    assert second.json()["error"]["code"] == "requests_per_minute"
    assert d.upstream.stats.generations == before


class Traffic:
    """A thread posting requests back to back; each outcome with its start and end time."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.outcomes: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {self.key}"}) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    status = c.post(self.url + "/v1/chat/completions", json=chat()).status_code
                except httpx.HTTPError:
                    status = -1
                self.outcomes.append((t0, time.monotonic(), status))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def between(self, start: float, end: float) -> list[int]:
        return [s for t0, t1, s in self.outcomes if t0 >= start and t1 <= end]


def test_redis_stopped_under_traffic_fails_closed_then_limits_hold_after_restart(deployment: Deployment) -> None:
    d = deployment
    key = create_key(d.env, "outage")
    gw = d.gateways[0]
    with Traffic(gw.url, key) as traffic:
        wait_until(lambda: traffic.between(0, time.monotonic()).count(200) >= 3, what="traffic before the outage")
        d.redis.stop()
        down_at = time.monotonic()
        wait_until(lambda: 503 in traffic.between(down_at, time.monotonic()), what="a 503 once Redis is down")
        generations = d.upstream.stats.generations  # any request admitted before the stop has been sent by now
        seen = len(traffic.outcomes)
        wait_until(lambda: len(traffic.outcomes) >= seen + 10, what="more traffic while down")
        down = httpx.post(gw.url + "/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {key}"},
                          timeout=30)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["type"] == "service_unavailable" and down.headers["Retry-After"] == "5"
        assert d.upstream.stats.generations == generations  # refused requests never reached the upstream
        up_at = time.monotonic()
        d.redis.start()
        wait_until(lambda: traffic.between(up_at, time.monotonic()).count(200) >= 3, timeout=30,
                   what="service after Redis came back")
    during = traffic.between(down_at, up_at)
    assert during and set(during) == {503}, sorted(set(during))
    after = httpx.post(gw.url + "/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {key}"},
                      timeout=30)
    assert after.status_code == 200
    # limits are correct after the restart (the counters were lost with the old Redis; the rules were not)
    limited_key = create_key(d.env, "after-outage")
    set_limit(d, limited_key, rpm=3)
    headers = {"Authorization": f"Bearer {limited_key}"}
    statuses = [httpx.post(d.gateways[i % 2].url + "/v1/chat/completions", json=chat(), headers=headers,
                           timeout=30).status_code for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_frozen_redis_fails_closed_within_the_limiter_timeout(deployment: Deployment) -> None:
    """Redis alive but not answering (SIGSTOP): the reserve gives up after its 2 s bound and the request gets 503
    (never a hang, never admitted unlimited); once Redis answers again, so does the gateway."""
    d = deployment
    key = create_key(d.env, "frozen")
    url, headers = d.gateways[0].url + "/v1/chat/completions", {"Authorization": f"Bearer {key}"}
    assert httpx.post(url, json=chat(), headers=headers, timeout=30).status_code == 200
    generations = d.upstream.stats.generations
    assert d.redis.proc is not None
    d.redis.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        frozen = httpx.post(url, json=chat(), headers=headers, timeout=30)
        took = time.monotonic() - started
    finally:
        d.redis.proc.send_signal(signal.SIGCONT)
    assert frozen.status_code == 503, frozen.text
    assert took < 10, took
    assert d.upstream.stats.generations == generations
    wait_until(lambda: httpx.post(url, json=chat(), headers=headers, timeout=30).status_code == 200, timeout=20,
               what="service once Redis answers again")


def test_gateway_sigkilled_under_traffic_chain_verifies_and_the_other_replica_serves(deployment: Deployment) -> None:
    """Fault drill (last in this module: it kills one of its gateways). Traffic on both replicas; one gets
    SIGKILL mid-traffic. The other keeps answering 200 throughout, and `palisade audit verify` passes over the
    chain both wrote to."""
    d = deployment
    survivor, victim = d.gateways
    key = create_key(d.env, "sigkill")
    with Traffic(survivor.url, key) as steady, Traffic(victim.url, key) as doomed:
        wait_until(lambda: steady.between(0, time.monotonic()).count(200) >= 5
                   and doomed.between(0, time.monotonic()).count(200) >= 5, what="traffic on both replicas")
        victim.proc.kill()  # SIGKILL: no shutdown, no flush
        victim.proc.wait()
        killed_at = time.monotonic()
        wait_until(lambda: steady.between(killed_at, time.monotonic()).count(200) >= 10,
                   what="the survivor to keep serving")
    after = steady.between(killed_at, time.monotonic())
    assert after and set(after) == {200}, sorted(set(after))
    assert set(doomed.between(killed_at, time.monotonic())) <= {-1}  # only connection errors from the dead one
    verify = cli(d.env, "audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]

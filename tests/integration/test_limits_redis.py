"""Limits through real `palisade serve` on Postgres + a private Redis: a token budget under 50 concurrent
requests, and Redis stopped mid-test (503, fail closed) then back (service recovers)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_upstreams import serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class PrivateRedis:
    """Our own redis-server, so a test may stop it without touching the shared one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                subprocess.run(
                    ["redis-cli", "-p", str(self.port), "ping"], capture_output=True
                ).stdout.strip()
                == b"PONG"
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def shared_data_dir(pg_url: str) -> Path:
    """One data dir per test database: its local key-encryption key must match the keyring rows in Postgres,
    so every module that runs gateways on this database uses the same one."""
    import tempfile

    path = Path(tempfile.gettempdir()) / f"palisade-{pg_url.rsplit('/', 1)[1]}"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> Iterator[tuple[GatewayProcess, dict, PrivateRedis]]:
    redis = PrivateRedis().start()
    tmp = tmp_path_factory.mktemp("limits")
    with serve_fake("slow", "openai", token_delay=0.01) as upstream:
        models = tmp / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
            f"    upstream_model: fake-model\n    max_concurrency: 64\n"
        )
        env = base_env(
            shared_data_dir(pg_url),
            PALISADE_DATABASE_URL=pg_url,
            PALISADE_REDIS_URL=redis.url,
            PALISADE_MODELS_FILE=str(models),
        )
        cli(env, "migrate")
        gw = GatewayProcess(env, tmp / "gw.log").start()
        try:
            yield gw, env, redis
        finally:
            gw.stop()
            redis.stop()


def principal_id(env: dict, key: str) -> str:
    return principal_ids(env, key)[0]


def principal_ids(env: dict, *keys: str) -> list[str]:
    """The principal ids of API keys, from one `palisade keys list`."""
    rows = [json.loads(line) for line in cli(env, "keys", "list").stdout.splitlines() if line.startswith("{")]
    by_prefix = {r["prefix"]: r["id"] for r in rows}
    return ["key:" + by_prefix["_".join(k.split("_")[:2])] for k in keys]


def chat(max_tokens: int = 40) -> dict:
    return {
        "model": "mock",
        "messages": [{"role": "user", "content": "count to three"}],
        "max_tokens": max_tokens,
    }


def test_50_concurrent_requests_never_overshoot_the_token_budget(gateway) -> None:
    gw, env, _ = gateway
    key = create_key(env, "budget")
    budget = 1000
    cli(env, "limits", "set", "principal", principal_id(env, key), "--daily-tokens", str(budget))
    time.sleep(2.5)  # every replica picks the change up within the poll period

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=gw.url, timeout=60, headers={"Authorization": f"Bearer {key}"}
        ) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=chat()) for _ in range(50)))

    responses = asyncio.run(run())
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(limited) == 50, {r.status_code for r in responses}
    assert ok and limited
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    reservation = max(r.json()["usage"]["prompt_tokens"] for r in ok) + 40
    assert used <= budget + reservation
    body = limited[0].json()["error"]
    assert body["code"] == "daily_tokens" and body["limit"]["name"] == "daily_tokens"
    assert limited[0].headers["Retry-After"].isdigit()
    assert limited[0].headers["RateLimit-Policy"] == f'"principal.daily_tokens";q={budget};w=86400'
    assert limited[0].headers["RateLimit"].startswith('"principal.daily_tokens";r=')


def test_429_arrives_before_a_stream_starts(gateway) -> None:
    gw, env, _ = gateway
    key = create_key(env, "streamer")
    cli(env, "limits", "set", "principal", principal_id(env, key), "--rpm", "1")
    time.sleep(2.5)
    headers = {"Authorization": f"Bearer {key}"}
    first = httpx.post(
        gw.url + "/v1/chat/completions", json={**chat(), "stream": True}, headers=headers, timeout=30
    )
    assert first.status_code == 200 and "data: [DONE]" in first.text
    second = httpx.post(
        gw.url + "/v1/chat/completions", json={**chat(), "stream": True}, headers=headers, timeout=30
    )
    assert second.status_code == 429
    assert second.headers["content-type"].startswith("application/json")
    assert second.json()["error"]["code"] == "requests_per_minute"


def test_redis_down_gives_503_and_service_recovers(gateway) -> None:
    gw, env, redis = gateway
    headers = {"Authorization": f"Bearer {create_key(env, 'outage')}"}
    assert (
        httpx.post(gw.url + "/v1/chat/completions", json=chat(), headers=headers, timeout=30).status_code
        == 200
    )
    redis.stop()
    try:
        down = httpx.post(gw.url + "/v1/chat/completions", json=chat(), headers=headers, timeout=30)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["type"] == "service_unavailable"
        assert "Retry-After" in down.headers
    finally:
        redis.start()
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        status = httpx.post(
            gw.url + "/v1/chat/completions", json=chat(), headers=headers, timeout=30
        ).status_code
        if status == 200:
            break
        time.sleep(0.3)
    assert status == 200

"""Unusual use through a real `palisade serve` (embedded mode, 2-second baseline windows): a quiet baseline, then a
burst of authorization denials raises an audit event and a Prometheus metric and, with ``anomaly.suspend`` on,
suspends the key (403) until `palisade limits unsuspend`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_upstreams import serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key, principal_ids

WINDOW_S = 2.0
SPIKE = 12  # denials in one window (the default anomaly.min_denials is 10; anomaly.min_requests 30 stays quiet)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, dict]]:
    tmp = tmp_path_factory.mktemp("anomaly")
    with serve_fake("ok", "openai") as upstream:
        models = tmp / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
            f"    upstream_model: fake-model\n"
        )
        env = base_env(
            tmp,
            PALISADE_MODELS_FILE=str(models),
            PALISADE_POLICY_CHECK_INTERVAL_S="0.2",
            PALISADE_ANOMALY_WINDOW_S=str(WINDOW_S),
            PALISADE_ANOMALY_WARMUP_WINDOWS="2",
        )
        gw = GatewayProcess(env, tmp / "gw.log").start()
        try:
            yield gw, env
        finally:
            gw.stop()


def anomalies(gw: GatewayProcess, kind: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    m = re.search(rf'^palisade_usage_anomalies_total\{{kind="{kind}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def next_window() -> None:
    """Sleep into the start of the next baseline window (the gateway counts windows of the wall clock)."""
    time.sleep(WINDOW_S - time.time() % WINDOW_S + 0.05)


def until(predicate, timeout: float = 10.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)


CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def test_a_denial_spike_is_audited_counted_and_suspends_the_key_until_an_admin_lifts_it(gateway, tmp_path) -> None:
    gw, env = gateway
    key = create_key(env, "jumpy-app")
    (pid,) = principal_ids(env, key)
    cli(env, "limits", "option", "anomaly.suspend", "true")
    headers = {"Authorization": f"Bearer {key}"}
    before = anomalies(gw, "denials")

    # baseline: one ordinary request in each of two windows (the warm-up)
    for _ in range(2):
        next_window()
        r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
    next_window()
    time.sleep(0.6)  # the last baseline window closes
    assert anomalies(gw, "denials") == before  # a quiet baseline raises nothing

    # the spike: an app probing admin routes it is denied (the guard counts each denial)
    async def probe() -> list[int]:
        async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=10) as c:
            return [r.status_code for r in await asyncio.gather(*(c.get("/admin/limits/") for _ in range(SPIKE)))]

    assert asyncio.run(probe()) == [403] * SPIKE
    until(lambda: anomalies(gw, "denials") > before, timeout=3 * WINDOW_S + 2)

    # suspended: 403 naming the suspension, until an admin looks
    until(lambda: httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10).status_code
          == 403, timeout=5)
    held = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10)
    assert "suspended" in held.json()["error"]["message"]

    out = tmp_path / "anomalies.jsonl"
    cli(env, "audit", "export", "--out", str(out), "--action", "limits:*")
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    spike = next(r for r in records if r["tag"] == "limits:usage:anomaly" and r["target"] == pid)
    assert spike["details"]["kinds"] == ["denials"]
    assert spike["details"]["minute"]["denials"] == SPIKE
    assert spike["details"]["baseline"]["minutes"] >= 2
    assert any(r["tag"] == "limits:principal:suspend" and r["target"] == pid for r in records)

    cli(env, "limits", "unsuspend", pid)
    until(lambda: httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10).status_code
          == 200, timeout=5)

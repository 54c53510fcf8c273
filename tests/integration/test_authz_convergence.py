"""Two real `palisade serve` replicas on Postgres + Redis converge after a policy change within 2 s: through the
pub/sub event, and through the periodic version check while Redis is unreachable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.authz.enforcer import DEFAULT_POLICY_PATH
from tests.integration.test_limits_redis import PrivateRedis, shared_data_dir
from tests.support.fake_upstreams import serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key, start_all

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str
) -> Iterator[tuple[list, dict, PrivateRedis]]:
    redis = PrivateRedis().start()
    tmp = tmp_path_factory.mktemp("converge")
    with serve_fake("ok", "openai") as upstream:
        models = tmp / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
            f"    upstream_model: fake-model\n"
        )
        env = base_env(
            shared_data_dir(tmp_path_factory, pg_url),
            PALISADE_DATABASE_URL=pg_url,
            PALISADE_REDIS_URL=redis.url,
            PALISADE_MODELS_FILE=str(models),
        )
        cli(env, "migrate")
        gws = [GatewayProcess(env, tmp / f"gw{i}.log") for i in range(2)]
        try:
            start_all(gws)
            yield gws, env, redis
        finally:
            for gw in gws:
                gw.stop()
            redis.stop()
            cli(env, "policy", "apply", str(DEFAULT_POLICY_PATH), "--reason", "test cleanup", check=False)


def statuses(gws: list[GatewayProcess], key: str) -> list[int]:
    """What each replica answers to GET /v1/models (needs only authn + policy, not the limiter)."""
    return [
        httpx.get(g.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code
        for g in gws
    ]


def converge(gws: list[GatewayProcess], key: str, want: int, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if statuses(gws, key) == [want, want]:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"replicas still answer {statuses(gws, key)}, wanted {want} within {within}s")


def test_revoked_permission_is_denied_on_every_replica_within_2s(replicas, tmp_path) -> None:
    gws, env, redis = replicas
    key = create_key(env, "converge")
    assert statuses(gws, key) == [200, 200]
    revoked = tmp_path / "revoked.csv"
    revoked.write_text(
        DEFAULT_POLICY_PATH.read_text().replace(", allow, app-inference", ", deny, app-inference")
    )

    cli(env, "policy", "apply", str(revoked), "--reason", "revoke app inference")
    # the CLI process itself took part of the budget; measure from its return, allow the 2 s target
    assert converge(gws, key, 403, within=2.0) <= 2.0

    # Redis unreachable: the change event is lost, the periodic version check still brings it everywhere
    redis.stop()
    try:
        out = cli(env, "policy", "rollback", "1", "--reason", "restore while redis is down")
        assert "restores v1" in out.stdout
        assert converge(gws, key, 200, within=2.0) <= 2.0
        chat = httpx.post(
            gws[0].url + "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert chat.status_code == 503  # inference needs the limiter: fail closed while Redis is down
    finally:
        redis.start()
    history = cli(env, "policy", "history").stdout
    assert "revoke app inference" in history and "restore while redis is down" in history

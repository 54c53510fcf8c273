"""Production mode: Postgres + Redis, migrated with `palisade migrate`, served by a real process."""

from __future__ import annotations

import httpx
import openai
import pytest
from text_generation import Client

from tests.support.server import GatewayProcess, base_env, cli, create_key


@pytest.fixture(scope="module")
def pg_gateway(tmp_path_factory, tiny_models_file, pg_url, redis_url):
    data = tmp_path_factory.mktemp("gw-pg")
    env = base_env(data, PALISADE_MODELS_FILE=str(tiny_models_file), PALISADE_DATABASE_URL=pg_url,
                   PALISADE_REDIS_URL=redis_url)
    assert "postgresql" in cli(env, "migrate").stdout
    key = create_key(env, "pg-app", "tiny")
    proc = GatewayProcess(env, data / "serve.log").start()
    yield proc, key
    proc.stop()


def test_ready_checks_database_and_redis(pg_gateway):
    proc, _ = pg_gateway
    checks = httpx.get(proc.url + "/readyz").json()["checks"]
    assert checks["database"] is True and checks["redis"] is True


def test_clients_work_in_production_mode(pg_gateway):
    proc, key = pg_gateway
    client = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.usage.completion_tokens == 4
    tgi = Client(base_url=f"{proc.url}/tgi/tiny", headers={"Authorization": f"Bearer {key}"})
    assert tgi.generate("hi", max_new_tokens=3).details.generated_tokens == 3


def test_key_is_stored_only_as_hash(pg_gateway, pg_url):
    import psycopg

    _, key = pg_gateway
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT prefix, key_hash FROM api_keys").fetchall()
    assert rows and all(key not in (p, h) and key.split("_")[2] not in h for p, h in rows)
    assert any(key.startswith(p) for p, _ in rows)

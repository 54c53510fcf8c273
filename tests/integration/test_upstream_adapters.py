"""Upstream LoRA adapters as model versions: two models-file versions of an alias that differ only by
``adapter_id`` swap like any other version. A second replica starting with the edited models file seeds version B;
the first replica learns it from the change counter alone (its Redis pub/sub never hears of a seed) and then
sends the same endpoints adapter b, each answer naming version B in ``X-Palisade-Model-Version``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_limits_redis import shared_data_dir
from tests.support.fake_upstreams import FakeServer, serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]
HEADER = "x-palisade-model-version"
REDIS = "redis://127.0.0.1:6379/14"


def models_file(path: Path, tgi: FakeServer, oai: FakeServer, adapter: str) -> Path:
    path.write_text(
        "models:\n"
        f"  - {{alias: lora-tgi, backend: tgi, url: '{tgi.url}', adapter_id: {adapter}}}\n"
        f"  - {{alias: lora-oai, backend: openai, url: '{oai.url}', adapter_id: {adapter}}}\n"
    )
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("adapters")
    with serve_fake("ok", "tgi") as tgi, serve_fake("ok", "openai") as oai:
        env = base_env(shared_data_dir(tmp_path_factory, pg_url), PALISADE_DATABASE_URL=pg_url,
                       PALISADE_REDIS_URL=REDIS,
                       PALISADE_MODELS_FILE=str(models_file(tmp / "a.yaml", tgi, oai, "acme/lora-a")))
        cli(env, "migrate")
        gw = GatewayProcess(env, tmp / "gw-a.log").start()
        try:
            yield gw, env, tgi, oai, tmp
        finally:
            gw.stop()


def version_of(env: dict, alias: str) -> str:
    shown = json.loads(cli(env, "models", "show", alias).stdout)
    return next(a["version"] for a in shown["aliases"] if a["alias"] == alias)


def ask(gw: GatewayProcess, key: str, alias: str, path: str = "/v1/chat/completions") -> str:
    body = {"model": alias, "max_tokens": 3}
    body |= {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers[HEADER]


def test_switching_the_adapter_id_swaps_the_alias_to_version_b(setup) -> None:
    gw, env, tgi, oai, tmp = setup
    key = create_key(env, "adapters")
    a = {alias: version_of(env, alias) for alias in ("lora-tgi", "lora-oai")}
    for alias in a:
        assert ask(gw, key, alias) == a[alias]
    assert ask(gw, key, "lora-tgi", "/v1/completions") == a["lora-tgi"]  # TGI /generate: parameters.adapter_id
    assert set(tgi.stats.adapters) == {"acme/lora-a"} and set(oai.stats.adapters) == {"acme/lora-a"}

    # version B: the same endpoints, another adapter, seeded by a second replica starting with the edited file
    env_b = env | {"PALISADE_MODELS_FILE": str(models_file(tmp / "b.yaml", tgi, oai, "acme/lora-b"))}
    replica = GatewayProcess(env_b, tmp / "gw-b.log").start()
    try:
        b = {alias: version_of(env, alias) for alias in a}
        assert all(b[alias] != a[alias] for alias in a)
        seen_from, start = len(tgi.stats.adapters), time.monotonic()
        while any(ask(gw, key, alias) != b[alias] for alias in a):  # the first replica swaps by polling
            assert time.monotonic() - start < 5.0, gw.log()[-3000:]
            time.sleep(0.05)
        took = time.monotonic() - start
        tgi_from, oai_from = len(tgi.stats.adapters), len(oai.stats.adapters)
        for _ in range(3):
            for alias in a:
                assert ask(gw, key, alias) == b[alias]
                assert ask(replica, key, alias) == b[alias]
            assert ask(gw, key, "lora-tgi", "/v1/completions") == b["lora-tgi"]
        assert set(tgi.stats.adapters[tgi_from:]) == {"acme/lora-b"}, tgi.stats.adapters
        assert set(oai.stats.adapters[oai_from:]) == {"acme/lora-b"}, oai.stats.adapters
        assert seen_from > 0 and took < 5.0
    finally:
        replica.stop()

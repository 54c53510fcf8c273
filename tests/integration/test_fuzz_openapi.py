"""Fuzz the whole OpenAPI surface as each kind of principal, in embedded and in production mode: no 5xx.

Principals: an admin person with a fresh-MFA session (cookie + CSRF token), an ML engineer, an approver, an
app's API key and an OAuth client's access token (tests/support/fuzzing.py makes each one fresh). Each run
covers every operation of the served schema except the few that would end the fuzzing session or lock everyone
out, and the test checks, from schemathesis' JUnit report, that it exercised that many operations. A person's
password/second-factor checks run last, on their own (100 wrong ones lock the account).

Phases: examples, fuzzing and stateful (links between operations). The suite keeps examples low
(``PALISADE_FUZZ_EXAMPLES``, default 3); ``python -m bench.fuzz_surface`` runs the coverage phase too with many
more examples.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_upstreams import serve_fake
from tests.support.fuzzing import CREDENTIAL_CHECKS, EXCLUDED, EXCLUDED_FOR_PEOPLE, KINDS, fuzz, make_principal
from tests.support.server import GatewayProcess, base_env, cli

pytestmark = pytest.mark.skipif(shutil.which("st", path=str(Path(sys.executable).parent)) is None,
                                reason="schemathesis is a dev dependency")

EXAMPLES = int(os.environ.get("PALISADE_FUZZ_EXAMPLES", "3"))
PHASES = "examples,fuzzing,stateful"
PEOPLE = ("admin", "ml_engineer", "approver")


def fuzz_env(data: Path, models: Path, **extra: str) -> dict[str, str]:
    # small token caps keep generated requests cheap; limits and the login slowdown high so fuzzing is not
    # throttled into testing only the 429 path
    return base_env(data, PALISADE_MODELS_FILE=str(models), PALISADE_DEFAULT_MAX_TOKENS="2",
                    PALISADE_MAX_TOKENS_CAP="8", PALISADE_LIMIT_REQUESTS_PER_MIN="1000000",
                    PALISADE_LIMIT_TOKENS_PER_MIN="100000000", PALISADE_LIMIT_CONCURRENCY="1000",
                    PALISADE_LOGIN_SLOWDOWN_AFTER="1000000", **extra)


@pytest.fixture(scope="module", params=["embedded", "production"])
def deployment(request, tmp_path_factory, tiny_model_dir) -> Iterator[tuple[GatewayProcess, dict, Path]]:
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"fuzz-{mode}")
    models = tmp / "models.yaml"
    if mode == "embedded":  # one process: SQLite, in-memory limits, the tiny model in process
        models.write_text(f"models:\n  - alias: tiny\n    backend: embedded\n    model: {tiny_model_dir}\n")
        env = fuzz_env(tmp / "data", models)
        gw = GatewayProcess(env, tmp / "gw.log").start()
        try:
            yield gw, env, tmp
        finally:
            gw.stop()
        return
    pg_url = request.getfixturevalue("pg_url")
    redis_url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/7"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    with serve_fake("ok", "openai") as upstream:
        models.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
                          f"    upstream_model: fake-model\n")
        env = fuzz_env(tmp / "data", models, PALISADE_DATABASE_URL=pg_url, PALISADE_REDIS_URL=redis_url)
        cli(env, "migrate")
        gw = GatewayProcess(env, tmp / "gw.log").start()
        try:
            yield gw, env, tmp
        finally:
            gw.stop()


def operation_ids(gw: GatewayProcess, headers: dict[str, str]) -> set[str]:
    spec = httpx.get(gw.url + "/schema/openapi.json", headers=headers, timeout=30).json()
    return {op["operationId"] for item in spec["paths"].values() for op in item.values() if "operationId" in op}


@pytest.mark.parametrize("kind", KINDS)
def test_fuzzing_as_each_principal_finds_no_server_error(deployment, kind: str) -> None:
    gw, env, tmp = deployment
    who = make_principal(gw, env, kind)
    all_ops = operation_ids(gw, who.headers)
    assert len(all_ops) >= 55, len(all_ops)  # the schema really lists the surface
    excluded = set(EXCLUDED) | (set(EXCLUDED_FOR_PEOPLE) | set(CREDENTIAL_CHECKS) if kind in PEOPLE else set())
    result = fuzz(gw, who, tmp / "st" / kind, examples=EXAMPLES, phases=PHASES)
    assert result.returncode == 0 and not result.failures, (result.failures, result.output[-4000:])
    assert result.operations >= len(all_ops - excluded), (result.operations, len(all_ops - excluded))
    if kind in PEOPLE:  # a 403 on what the role may not do is right; a 401 would mean the session was lost
        assert "401 Unauthorized (" not in result.output, result.output[-3000:]
    if kind in PEOPLE:  # last: the person's own credential checks, which may lock the account
        checks = fuzz(gw, who, tmp / "st" / kind, examples=EXAMPLES, phases=PHASES, only=CREDENTIAL_CHECKS)
        assert checks.returncode == 0 and not checks.failures, (checks.failures, checks.output[-4000:])
        assert checks.operations >= len(set(CREDENTIAL_CHECKS) & all_ops)
    assert gw.alive() and "Traceback" not in gw.log()

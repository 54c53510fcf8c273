"""Fault drill: Postgres stopped and restarted under traffic (a private cluster, never the shared one).

While the database is down every new request gets 503 (nothing is answered without its audit record); once it
is back the gateway serves again without a restart, `palisade audit verify` passes, and every request that was
answered 200 has its audit record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.support.fake_upstreams import serve_fake
from tests.support.private_postgres import PrivatePostgres, available
from tests.support.server import GatewayProcess, base_env, cli, create_key
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(not available(), reason="needs Debian's pg_ctlcluster")]

CHAT = {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


class Traffic:
    """Back-to-back requests in a thread: (start, end, status, request id) of each."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.outcomes: list[tuple[float, float, int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {self.key}"}) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(self.url + "/v1/chat/completions", json=CHAT)
                    status, rid = r.status_code, r.headers.get("x-request-id")
                except httpx.HTTPError:
                    status, rid = -1, None
                self.outcomes.append((t0, time.monotonic(), status, rid))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def statuses(self, start: float, end: float | None = None) -> list[int]:
        end = end if end is not None else time.monotonic()
        return [s for t0, t1, s, _ in self.outcomes if t0 >= start and t1 <= end]


@pytest.fixture(scope="module")
def drill(tmp_path_factory, redis_url) -> Iterator[tuple[GatewayProcess, dict, PrivatePostgres, str, str]]:
    pg = PrivatePostgres().create()
    tmp = tmp_path_factory.mktemp("pg-drill")
    try:
        with psycopg.connect(pg.url, autocommit=True) as c:
            c.execute("CREATE DATABASE palisade")
        db_url = pg.url.rsplit("/", 1)[0] + "/palisade"
        with serve_fake("ok", "openai") as upstream:
            models = tmp / "models.yaml"
            models.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
                              f"    upstream_model: fake-model\n")
            env = base_env(tmp / "data", PALISADE_DATABASE_URL=db_url, PALISADE_MODELS_FILE=str(models),
                           PALISADE_REDIS_URL=redis_url.rsplit("/", 1)[0] + "/6", PALISADE_AUDIT_WRITE_TIMEOUT_S="3")
            cli(env, "migrate")
            key = create_key(env, "pg-drill", "mock")
            gw = GatewayProcess(env, tmp / "gw.log").start()
            try:
                yield gw, env, pg, db_url, key
            finally:
                gw.stop()
    finally:
        pg.drop()


def test_postgres_restarted_under_traffic(drill) -> None:
    gw, env, pg, db_url, key = drill
    with Traffic(gw.url, key) as traffic:
        wait_until(lambda: traffic.statuses(0).count(200) >= 5, what="traffic before the outage")
        pg.stop()
        down_at = time.monotonic()
        wait_until(lambda: traffic.statuses(down_at).count(503) >= 3, timeout=30, what="503s while down")
        up_at = time.monotonic()
        pg.start()
        wait_until(lambda: traffic.statuses(up_at).count(200) >= 5, timeout=60, what="service after the restart")
    during = traffic.statuses(down_at, up_at)
    assert during and set(during) == {503}, sorted(set(during))
    assert gw.alive()
    verify = cli(env, "audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    answered = {rid for _, _, status, rid in traffic.outcomes if status == 200}
    with psycopg.connect(db_url) as c:
        recorded = {r[0] for r in c.execute("SELECT request_id FROM audit_records WHERE request_id IS NOT NULL")}
    assert answered and not answered - recorded, f"answered without a record: {sorted(answered - recorded)[:5]}"

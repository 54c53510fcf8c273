"""Fail closed on real Postgres: the gateway runs as an application role that may only SELECT/INSERT the audit
table (migration 0002's grants and trigger); when the audit store refuses writes, requests get 503 and nothing is
served unaudited; when it accepts again, service resumes."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.app_role import app_role_database
from tests.support.server import GatewayProcess, base_env, create_key
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def app_role_db(pg_url: str):
    with app_role_database(pg_url) as dbs:
        yield dbs


def test_app_role_cannot_update_delete_truncate_or_disable_the_trigger(app_role_db) -> None:
    owner_url, app_url, _ = app_role_db
    with psycopg.connect(app_url, autocommit=True) as c:
        c.execute(
            "INSERT INTO audit_records (seq, at, tag, details, prev_hash, hash) "
            "VALUES (900001, now(), 'test:x:y', '{}', 'p', 'h')"
        )
        for sql in (
            "UPDATE audit_records SET actor = 'x' WHERE seq = 900001",
            "DELETE FROM audit_records WHERE seq = 900001",
            "TRUNCATE audit_records",
            "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only",
            "DELETE FROM audit_checkpoints",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
    # the owner is stopped by the trigger too (only a deliberate, owner-run prune disables it)
    with psycopg.connect(owner_url, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            c.execute("DELETE FROM audit_records WHERE seq = 900001")
        c.execute("SET session_replication_role = replica")
        c.execute("DELETE FROM audit_records WHERE seq = 900001")  # clean up the test row


def test_audit_store_refusing_writes_gives_503_and_nothing_is_served(app_role_db, tmp_path: Path) -> None:
    from tests.support.fake_upstreams import serve_fake

    owner_url, app_url, role = app_role_db
    with serve_fake("ok", "openai") as upstream:
        models = tmp_path / "models.yaml"
        models.write_text(
            f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
            "    upstream_model: fake-model\n"
        )
        env = base_env(
            tmp_path,
            PALISADE_DATABASE_URL=app_url,
            PALISADE_MODELS_FILE=str(models),
            PALISADE_AUDIT_WRITE_TIMEOUT_S="3",
        )
        key = create_key(env, "fc-app", "mock")
        gw = GatewayProcess(env, tmp_path / "gw.log").start()
        body = {"model": "mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        auth = {"Authorization": f"Bearer {key}"}
        try:
            ok = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
            assert ok.status_code == 200, ok.text
            assert "Echo" in ok.json()["choices"][0]["message"]["content"]
            with psycopg.connect(owner_url, autocommit=True) as c:  # its completion follows the answer
                wait_until(lambda: c.execute("SELECT count(*) FROM audit_records WHERE request_id = %s AND tag = "
                                             "'inference:request:complete'", (ok.headers["x-request-id"],))
                           .fetchone()[0] == 1, timeout=10, what="the first answer's completion record")
            ready = httpx.get(gw.url + "/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["checks"]["audit"] is True, ready.text
            with psycopg.connect(owner_url, autocommit=True) as c:
                before = c.execute("SELECT count(*) FROM audit_records").fetchone()[0]
                c.execute(f'REVOKE INSERT ON audit_records FROM "{role}"')  # a real refusal by the store
            # readiness sees it before any request does: a load balancer stops sending traffic here
            unready = httpx.get(gw.url + "/readyz", timeout=10)
            assert unready.status_code == 503, unready.text
            assert unready.json()["checks"]["audit"] is False and unready.json()["checks"]["database"] is True
            generations = upstream.stats.generations
            denied = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
            assert denied.status_code == 503, denied.text
            err = denied.json()["error"]
            assert err["type"] == "service_unavailable" and "audit" in err["message"]
            assert "choices" not in denied.json() and "Echo" not in denied.text
            # the refusing store was seen (by /readyz here, or by a failed append): no model work is done for a
            # request whose record cannot be written
            assert upstream.stats.generations == generations, "the upstream was called while the audit was down"
            # a stream is refused before it starts (its start record cannot be written)
            streamed = httpx.post(gw.url + "/v1/chat/completions", json={**body, "stream": True}, headers=auth,
                                  timeout=30)
            assert streamed.status_code == 503 and streamed.headers["content-type"].startswith("application/json")
            assert "data:" not in streamed.text
            # an authentication failure is audited too, so it also fails closed (503, not an unaudited 401)
            bad = httpx.post(
                gw.url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": "Bearer pal_000000000000_" + "A" * 43},
                timeout=30,
            )
            assert bad.status_code == 503, bad.text
            assert upstream.stats.generations == generations, "the upstream was called while the audit was down"
            with psycopg.connect(owner_url, autocommit=True) as c:
                assert c.execute("SELECT count(*) FROM audit_records").fetchone()[0] == before
                c.execute(f'GRANT INSERT ON audit_records TO "{role}"')
            assert httpx.get(gw.url + "/readyz", timeout=10).status_code == 200
            again = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
            assert again.status_code == 200, again.text
        finally:
            gw.stop()
        with psycopg.connect(owner_url, autocommit=True) as c:
            tags = [r[0] for r in c.execute("SELECT tag FROM audit_records ORDER BY seq")]
        assert tags.count("inference:request:complete") == 2 and tags[0] == "admin:key:create"
        assert "audit:probe:ready" not in tags  # readiness probes roll back

"""A Celery job calls the same inference entry point as ``POST /v1/chat/completions``: authorised, limited and
audited exactly like an HTTP call by the same principal (same audit record fields), and refused the same way."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests.support.server import ROOT, GatewayProcess, base_env, cli, create_key
from tests.support.waiting import wait_until

ACCEPTED = "inference:request:accepted"

SEND = """
import json, sys
from gateway.jobs import make_client
from gateway.settings import get_settings
args = json.loads(sys.argv[1])
r = make_client(get_settings()).send_task('palisade.inference.generate', args=args, queue='cpu')
print(json.dumps(r.get(timeout=150)))
"""


def _send(env: dict[str, str], *args: object) -> dict:
    out = subprocess.run([sys.executable, "-c", SEND, json.dumps(list(args))], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _records(data_dir, request_id: str) -> list[tuple[str, str, dict]]:
    """The request's records once its completion is in (appended just after the answer left)."""
    def read() -> list[tuple[str, str, dict]]:
        with sqlite3.connect(data_dir / "palisade.db") as db:
            rows = db.execute("SELECT tag, actor, details FROM audit_records WHERE request_id = ? ORDER BY seq",
                              (request_id,)).fetchall()
        found = [(tag, actor, json.loads(details)) for tag, actor, details in rows]
        return found if any(tag.startswith("inference:request:") and tag != ACCEPTED for tag, _, _ in found) else []

    return wait_until(read, timeout=10, what=f"the completion record of {request_id}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models_file):
    data = tmp_path_factory.mktemp("jobs-inference")
    env = base_env(data, PALISADE_MODELS_FILE=str(tiny_models_file))
    key = create_key(env, "job-app", "tiny")
    other = create_key(env, "other-app", "elsewhere")  # scoped to a model it is not: refused for `tiny`
    ids = {json.loads(line)["name"]: json.loads(line)["id"] for line in cli(env, "keys", "list").stdout.splitlines()}
    gw = GatewayProcess(env, data / "serve.log").start()
    worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu"], env=env, cwd=ROOT,
                              stdout=open(data / "worker.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    yield data, env, gw, key, other, ids
    worker.terminate()
    worker.wait(timeout=30)
    gw.stop()


def test_job_call_is_audited_like_http(setup):
    data, env, gw, key, _, ids = setup
    messages = [{"role": "user", "content": "hello"}]
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "tiny", "messages": messages, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
    http = _records(data, r.headers["x-request-id"])

    out = _send(env, f"key:{ids['job-app']}", "tiny", messages, 4)
    assert "error" not in out, out
    assert out["usage"]["completion_tokens"] >= 1
    job = _records(data, out["request_id"])

    assert [t for t, _, _ in http] == [t for t, _, _ in job] == [ACCEPTED, "inference:request:complete"]
    for (_, http_actor, http_details), (_, job_actor, job_details) in zip(http, job, strict=True):
        assert http_actor == job_actor == f"key:{ids['job-app']}"
        # the same fields, and the same credential named; only where it came from differs
        assert set(job_details) - {"origin"} == set(http_details) - {"client_ip"}
        assert job_details["origin"] == "task"
        assert job_details["auth_method"] == http_details["auth_method"] == "api_key"
        assert job_details["auth_id"] == http_details["auth_id"] == ids["job-app"]


def test_job_is_refused_like_http(setup):
    data, env, gw, _, other, ids = setup
    messages = [{"role": "user", "content": "hello"}]
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {other}"},
                   json={"model": "tiny", "messages": messages, "max_tokens": 4}, timeout=60)
    assert r.status_code == 403
    out = _send(env, f"key:{ids['other-app']}", "tiny", messages, 4)
    assert out["status"] == 403 and out["error"]["type"] == r.json()["error"]["type"]


def test_job_for_a_revoked_key_stops(setup):
    data, env, gw, key, _, ids = setup
    cli(env, "keys", "revoke", ids["job-app"])
    out = _send(env, f"key:{ids['job-app']}", "tiny", [{"role": "user", "content": "hi"}], 4)
    assert out["status"] == 403 and "may no longer act" in out["error"]["message"]

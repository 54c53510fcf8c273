"""Prompts and completions enter the audit trail only for models that retain content, and then encrypted."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.support.server import GatewayProcess, base_env, cli, create_key
from tests.support.waiting import wait_until

SECRET_PROMPT = "the merger code name is BLUEHERON-7731"


@pytest.fixture(scope="module")
def gw(tmp_path_factory, tiny_model_dir):
    data = tmp_path_factory.mktemp("gw-retain")
    models = data / "models.yaml"
    models.write_text(
        "models:\n"
        f"  - alias: kept\n    backend: embedded\n    model: {tiny_model_dir}\n    retain_content: true\n"
        f"  - alias: plain\n    backend: embedded\n    model: {tiny_model_dir}\n"
    )
    env = base_env(data, PALISADE_MODELS_FILE=str(models))
    key = create_key(env, "retention")
    proc = GatewayProcess(env, data / "serve.log").start()
    yield proc, key, env, data
    proc.stop()


def _records(data, request_id):
    """The request's records once its completion is in (appended just after the answer left)."""
    def read():
        with sqlite3.connect(data / "palisade.db") as conn:
            query = "SELECT seq, tag, details FROM audit_records WHERE request_id = ? ORDER BY seq"
            rows = conn.execute(query, (request_id,)).fetchall()
        return rows if any(row[1] == "inference:request:complete" for row in rows) else []

    return wait_until(read, timeout=10, what=f"the completion record of {request_id}")


@pytest.mark.parametrize("stream", [False, True])
def test_retained_content_is_encrypted_and_readable_by_the_cli(gw, stream):
    proc, key, env, data = gw
    rid = f"retain-{int(stream)}"
    # greedy: the tiny random model samples an empty answer now and then (about 1 in 40); its greedy answer to
    # this prompt is fixed, and not empty
    body = {"model": "kept", "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 5,
            "stream": stream, "temperature": 0}
    r = httpx.post(proc.url + "/v1/chat/completions", json=body, timeout=60,
                   headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid})
    assert r.status_code == 200
    if stream:
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        answered = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    else:
        answered = r.json()["choices"][0]["message"]["content"]
    rows = [row for row in _records(data, rid) if row[1] == "inference:request:complete"]
    assert len(rows) == 1
    seq, _, details = rows[0]
    assert "content_enc" in json.loads(details)
    assert SECRET_PROMPT not in (data / "palisade.db").read_bytes().decode("latin-1")  # nothing in clear at rest
    shown = json.loads(cli(env, "audit", "content", str(seq)).stdout)
    assert shown["messages"] == [{"role": "user", "content": SECRET_PROMPT}]
    assert isinstance(shown["completion"], str) and shown["completion"]
    assert shown["completion"] == answered  # what the client was sent, whole
    with sqlite3.connect(data / "palisade.db") as conn:  # reading it is audited too
        assert conn.execute("SELECT count(*) FROM audit_records WHERE tag = 'audit:content:read' AND target = ?",
                            (f"seq:{seq}",)).fetchone()[0] == 1
    # the accepted record, durable before the answer, holds the prompt too (sealed the same way)
    (accepted, _, first), = [row for row in _records(data, rid) if row[1] != "inference:request:complete"]
    assert "content_enc" in json.loads(first)
    asked = json.loads(cli(env, "audit", "content", str(accepted)).stdout)
    assert asked["messages"] == [{"role": "user", "content": SECRET_PROMPT}] and asked["completion"] is None


def test_models_without_retention_keep_no_content(gw):
    proc, key, env, data = gw
    r = httpx.post(proc.url + "/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {key}", "X-Request-ID": "no-retain"},
                   json={"model": "plain", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3})
    assert r.status_code == 200
    (seq, _, details), = [row for row in _records(data, "no-retain") if row[1] == "inference:request:complete"]
    assert "content_enc" not in json.loads(details)
    out = cli(env, "audit", "content", str(seq), check=False)
    assert out.returncode != 0 and "holds no content" in out.stderr


def test_verify_still_holds(gw):
    _, _, env, _ = gw
    assert cli(env, "audit", "verify").returncode == 0

"""A real gateway exports its request spans over OTLP/HTTP to a receiver process: one span per request (continuing
the caller's traceparent) with children for authentication, authorization, limits, routing, the upstream call
(which receives the traceparent) and audit; the trace id is in the JSON access log line and the audit record."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.support.fake_upstreams import serve_fake
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.server import GatewayProcess, base_env, cli, create_key

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with serve_fake("ok", "openai") as srv:
        path = tmp_path_factory.mktemp("models") / "models.yaml"
        path.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: \"{srv.url}\"\n"
                        f"    upstream_model: fake-model\n")
        yield srv, path


def test_request_spans_log_and_audit_share_the_trace(tmp_path, upstream):
    srv, models = upstream
    with OtlpReceiver(tmp_path / "spans.jsonl") as receiver:
        env = base_env(tmp_path / "d", PALISADE_MODELS_FILE=str(models), PALISADE_LOG_LEVEL="info",
                       PALISADE_OTEL_ENDPOINT=receiver.endpoint, PALISADE_OTEL_SERVICE_NAME="gw-test")
        cli(env, "migrate")
        key = create_key(env, "app", "mock")
        gw = GatewayProcess(env, tmp_path / "gw.log").start()
        try:
            for stream in (False, True):
                r = httpx.post(gw.url + "/v1/chat/completions",
                               headers={"Authorization": f"Bearer {key}",
                                        "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
                               json={"model": "mock", "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 2, "stream": stream})
                assert r.status_code == 200, r.text
                upstream_parent = srv.stats.last_traceparent
                assert upstream_parent and upstream_parent.split("-")[1] == TRACE
        finally:
            gw.stop()  # graceful: the batch processor flushes on shutdown
        spans = [s for s in receiver.spans(wait_for="upstream") if s["trace_id"] == TRACE]
    roots = [s for s in spans if s["name"] == "http.request"]
    assert len(roots) == 2
    for root in roots:
        assert root["parent_span_id"] == "00f067aa0ba902b7" and root["service"] == "gw-test"
        assert root["attributes"]["http.route"] == "/v1/chat/completions"
        assert root["attributes"]["http.response.status_code"] == 200
        children = {s["name"] for s in spans if s["parent_span_id"] == root["span_id"]}
        assert {"authentication", "authorization", "limits", "routing", "upstream", "audit.record"} <= children
    upstream_spans = {s["span_id"] for s in spans if s["name"] == "upstream"}
    assert upstream_parent.split("-")[2] in upstream_spans  # the upstream saw the upstream span as its parent

    logs = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "request" and e.get("trace_id") == TRACE for e in logs)
    with sqlite3.connect(tmp_path / "d" / "palisade.db") as db:
        details = [json.loads(d) for (d,) in db.execute("SELECT details FROM audit_records "
                                                         "WHERE tag = 'inference:request:complete'")]
    assert len(details) == 2 and all(d["trace_id"] == TRACE for d in details)

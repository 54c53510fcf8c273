"""A real gateway exports its request spans over OTLP/HTTP to a receiver process, continues the caller's
traceparent, and writes the trace id into the JSON access log and the audit record."""

from __future__ import annotations

import json
import sqlite3

import httpx

from tests.integration.test_backup_restore import upstream_models  # noqa: F401 - the fake-upstream models file
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.server import GatewayProcess, base_env, cli, create_key

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_request_spans_log_and_audit_share_the_trace(tmp_path, upstream_models):  # noqa: F811
    with OtlpReceiver(tmp_path / "spans.jsonl") as receiver:
        env = base_env(tmp_path / "d", PALISADE_MODELS_FILE=str(upstream_models), PALISADE_LOG_LEVEL="info",
                       PALISADE_OTEL_ENDPOINT=receiver.endpoint, PALISADE_OTEL_SERVICE_NAME="gw-test")
        cli(env, "migrate")
        key = create_key(env, "app", "mock")
        gw = GatewayProcess(env, tmp_path / "gw.log").start()
        try:
            r = httpx.post(gw.url + "/v1/chat/completions",
                           headers={"Authorization": f"Bearer {key}",
                                    "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
                           json={"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert r.status_code == 200, r.text
        finally:
            gw.stop()  # graceful: the batch processor flushes on shutdown
        spans = [s for s in receiver.spans(wait_for="http.request") if s["trace_id"] == TRACE]
    names = {s["name"] for s in spans}
    assert {"http.request", "audit.record"} <= names, names
    root = next(s for s in spans if s["name"] == "http.request")
    assert root["parent_span_id"] == "00f067aa0ba902b7" and root["service"] == "gw-test"
    assert root["attributes"]["http.route"] == "/v1/chat/completions"
    assert root["attributes"]["http.response.status_code"] == 200
    audit_spans = [s for s in spans if s["name"] == "audit.record"]
    assert all(s["parent_span_id"] == root["span_id"] for s in audit_spans)

    logs = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "request" and e.get("trace_id") == TRACE for e in logs)
    with sqlite3.connect(tmp_path / "d" / "palisade.db") as db:
        details = [json.loads(d) for (d,) in db.execute("SELECT details FROM audit_records "
                                                         "WHERE tag = 'inference:request:complete'")]
    assert details and details[-1]["trace_id"] == TRACE

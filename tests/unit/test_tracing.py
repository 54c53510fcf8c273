"""Tracing API: no-op when off; span shapes, traceparent, trace ids in logs; OTLP/HTTP export to a real receiver."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from gateway.observability import tracing


@pytest.fixture
def memory():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.configure(SimpleNamespace(otel_endpoint=None, otel_service_name="t", otel_sample_ratio=1.0),
                      exporter=exporter)
    yield exporter
    tracing.shutdown()


def test_off_by_default_is_a_noop():
    tracing.shutdown()
    assert not tracing.configure(SimpleNamespace(otel_endpoint=None))
    with tracing.span("anything", a=1) as s:
        s.set_attribute("x", 1)
        assert not s.is_recording()
        assert tracing.current_trace_id() is None
    assert tracing.inject({}) == {}
    assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None


def test_nested_spans_share_a_trace_and_record_errors(memory):
    with tracing.span("request", route="/v1/chat/completions") as root:
        with tracing.span("authorization", action="model:invoke", skipped=None):
            pass
        with pytest.raises(ValueError), tracing.span("upstream", kind="client"):
            raise ValueError("boom")
        trace_id = tracing.current_trace_id()
    spans = {s.name: s for s in memory.get_finished_spans()}
    assert set(spans) == {"request", "authorization", "upstream"}
    assert format(spans["request"].context.trace_id, "032x") == trace_id
    for child in ("authorization", "upstream"):
        assert spans[child].parent.span_id == spans["request"].context.span_id
    assert "skipped" not in spans["authorization"].attributes
    assert spans["upstream"].status.status_code.name == "ERROR"
    assert root is not None


def test_traceparent_round_trip_and_log_field(memory):
    incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.span("request", context=tracing.extract(incoming), kind="server"):
        out = tracing.inject({})
        line = tracing.add_trace_id(None, "info", {"event": "request"})
    assert out["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert json.dumps(line)


def test_exports_over_otlp_http_to_a_receiver_process(tmp_path):
    from tests.support.otlp_receiver import OtlpReceiver

    with OtlpReceiver(tmp_path / "spans.jsonl") as receiver:
        settings = SimpleNamespace(otel_endpoint=receiver.endpoint, otel_service_name="palisade-test",
                                   otel_sample_ratio=1.0)
        assert tracing.configure(settings)
        try:
            with tracing.span("dataset.ingest", dataset="ds-1", records=3):
                with tracing.span("dataset.pii"):
                    pass
        finally:
            tracing.shutdown()  # flushes the batch processor
        spans = {s["name"]: s for s in receiver.spans(wait_for="dataset.ingest")}
    assert spans["dataset.ingest"]["service"] == "palisade-test"
    assert spans["dataset.ingest"]["attributes"] == {"dataset": "ds-1", "records": 3}
    assert spans["dataset.pii"]["parent_span_id"] == spans["dataset.ingest"]["span_id"]
    assert spans["dataset.pii"]["trace_id"] == spans["dataset.ingest"]["trace_id"]


def test_celery_task_spans_continue_the_enqueuing_trace(memory):
    from celery import Celery

    from gateway.observability.celery import _postrun, _prerun, enqueue_headers

    app = Celery("t", broker="memory://", backend="cache+memory://")

    @app.task(name="palisade.test.stage")
    def stage() -> str:
        with tracing.span("dataset.dedup", records=2):
            return tracing.current_trace_id() or ""

    from celery import signals

    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    try:
        with tracing.span("http.request"):
            headers = enqueue_headers()
            trace_id = tracing.current_trace_id()
        result = stage.apply(headers=headers).get()
    finally:
        signals.task_prerun.disconnect(_prerun)
        signals.task_postrun.disconnect(_postrun)
    assert result == trace_id
    spans = {s.name: s for s in memory.get_finished_spans()}
    task = spans["celery.task palisade.test.stage"]
    assert format(task.context.trace_id, "032x") == trace_id
    assert spans["dataset.dedup"].parent.span_id == task.context.span_id


def test_job_phases_are_sibling_spans_under_the_job_even_from_a_thread(memory):
    import threading

    with tracing.span("celery.task palisade.datasets.process") as job:
        phases = tracing.Phases("dataset", version="v1")

        def pipeline() -> None:  # the pipeline runs in a worker thread and reports its stages
            for stage in ("ingest", "process", "process", "tokenise", "store"):
                phases.enter(stage)

        t = threading.Thread(target=pipeline)
        t.start()
        t.join()
        phases.close()
    spans = {s.name: s for s in memory.get_finished_spans()}
    assert [n for n in spans if n.startswith("dataset.")] == ["dataset.ingest", "dataset.process", "dataset.tokenise",
                                                               "dataset.store"]
    job_id = job.get_span_context().span_id
    assert all(spans[n].parent.span_id == job_id for n in spans if n.startswith("dataset."))
    assert spans["dataset.ingest"].attributes["version"] == "v1"

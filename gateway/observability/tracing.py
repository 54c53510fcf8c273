"""OpenTelemetry tracing behind one small API, off unless ``PALISADE_OTEL_ENDPOINT`` is set.

Use anywhere (request path, Celery tasks, CLI)::

    from gateway.observability.tracing import span
    with span("authorization", action=action) as s:
        ...
        s.set_attribute("decision", "allow")

When tracing is off, ``span`` yields a shared no-op object and costs one global read, so call sites never
check a flag. When on, spans go to the maintained SDK's ``BatchSpanProcessor`` and the OTLP/HTTP (protobuf)
exporter, off the request's critical path. ``inject(headers)`` adds the W3C ``traceparent`` for upstream calls,
``extract(headers)`` continues a caller's trace, and ``current_trace_id()`` is what the JSON log line and the audit
record carry so a trace, a log line and an audit record can be joined.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

_tracer: Any = None  # an opentelemetry Tracer once configure() turned tracing on
_provider: Any = None
_propagator: Any = None


class _NoopSpan:
    """Stands in for a span when tracing is off: every method accepts and ignores."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def record_exception(self, exc: BaseException) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NOOP_SPAN = _NoopSpan()


class _NoopContext:
    """The context manager ``span`` returns when tracing is off: no generator, no allocation per call."""

    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return NOOP_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP_CONTEXT = _NoopContext()


def enabled() -> bool:
    return _tracer is not None


def configure(settings: Any, *, exporter: Any = None, service_name: str | None = None) -> bool:
    """Turn tracing on when ``settings.otel_endpoint`` is set (or an ``exporter`` is given, e.g. the SDK's
    in-memory one in tests). Idempotent per process; returns whether tracing is on."""
    global _tracer, _provider, _propagator
    endpoint = getattr(settings, "otel_endpoint", None)
    if exporter is None and not endpoint:
        return enabled()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    shutdown()
    name = service_name or getattr(settings, "otel_service_name", "palisade-gateway")
    ratio = float(getattr(settings, "otel_sample_ratio", 1.0))
    provider = TracerProvider(resource=Resource.create({"service.name": name}),
                              sampler=ParentBased(TraceIdRatioBased(ratio)))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _provider, _propagator = provider, TraceContextTextMapPropagator()
    _tracer = provider.get_tracer("palisade")
    return True


def shutdown() -> None:
    """Flush pending spans and turn tracing off (process exit, tests)."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> None:
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    # OTel attributes are str/bool/int/float (or lists of them); None is dropped, anything else is str()ed
    return {k: v if isinstance(v, str | bool | int | float) else str(v) for k, v in attrs.items() if v is not None}


def span(name: str, *, context: Any = None, kind: str | None = None, **attrs: Any) -> Any:
    """A child of the current span (or of ``context``, from ``extract``); a no-op when tracing is off.
    Exceptions are recorded on the span and re-raised. Use as ``with span(...) as s:``."""
    tracer = _tracer
    if tracer is None:
        return _NOOP_CONTEXT
    return _span(tracer, name, context, kind, attrs)


@contextmanager
def _span(tracer: Any, name: str, context: Any, kind: str | None, attrs: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    span_kind = getattr(SpanKind, (kind or "internal").upper())
    with tracer.start_as_current_span(name, context=context, kind=span_kind, attributes=_clean(attrs)) as s:
        yield s


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add ``traceparent`` (and ``tracestate``) for the current span to outgoing headers."""
    if _propagator is not None:
        _propagator.inject(headers)
    return headers


def extract(headers: Mapping[str, str]) -> Any:
    """The caller's trace context from incoming headers (None when off or absent): pass as ``span(context=)``."""
    if _propagator is None:
        return None
    return _propagator.extract({k.lower(): v for k, v in headers.items()})


def aiohttp_trace_configs() -> list[Any]:
    """For an upstream ``aiohttp.ClientSession(trace_configs=...)``: every request it sends carries the current
    span's ``traceparent``. Empty when tracing is off (sessions are made after ``configure``)."""
    if _tracer is None:
        return []
    import aiohttp

    async def on_start(_session: Any, _ctx: Any, params: Any) -> None:
        inject(params.headers)

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_start)
    return [config]


def current_trace_id() -> str | None:
    """32 hex digits of the current trace, or None (tracing off, no span, or not sampled)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def add_trace_id(_logger: Any, _name: str, event_dict: dict) -> dict:
    """structlog processor: the current trace id on every JSON log line written inside a span."""
    if _tracer is not None and "trace_id" not in event_dict:
        trace_id = current_trace_id()
        if trace_id:
            event_dict["trace_id"] = trace_id
    return event_dict


class Phases:
    """One span per phase of a long job (``dataset.ingest``, ``dataset.tokenise``, ``train.step``...): entering a
    phase ends the previous one. Made where the job's span is current; phases may be entered from another thread
    (a pipeline running in a worker thread), their parent stays the job's span. A no-op when tracing is off."""

    def __init__(self, prefix: str, **attrs: Any) -> None:
        self.prefix = prefix
        self.attrs = attrs
        self.current: str | None = None
        self._span: Any = None
        self._parent: Any = None
        if _tracer is not None:
            from opentelemetry import context as otel_context

            self._parent = otel_context.get_current()

    def enter(self, phase: str, **attrs: Any) -> None:
        if phase == self.current:
            return
        self.close()
        self.current = phase
        if _tracer is not None:
            self._span = _tracer.start_span(f"{self.prefix}.{phase}", context=self._parent,
                                            attributes=_clean({**self.attrs, **attrs}))

    def close(self) -> None:
        if self._span is not None:
            self._span.end()
            self._span = None
        self.current = None

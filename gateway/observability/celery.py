"""Tracing for Celery workers: the exporter starts in each worker process (after the fork), and every task runs
in a span ``celery.task <name>`` that continues the trace of whoever enqueued it when the message carries a
``traceparent`` header (``enqueue_headers()`` gives it). Stages inside a task use ``tracing.span`` as usual.

Wire once where the Celery app is made: ``instrument_celery(settings)``.
"""

from __future__ import annotations

from typing import Any

from gateway.observability import tracing

_open: dict[str, Any] = {}  # task id -> the span's context manager, between prerun and postrun


def enqueue_headers() -> dict[str, str]:
    """Headers for ``apply_async(headers=...)`` so the task's span joins the current trace."""
    return dict(tracing.inject({}))


def _prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not tracing.enabled() or task_id is None:
        return
    request = getattr(task, "request", None)
    carrier = {k: v for k in ("traceparent", "tracestate")
               if (v := getattr(request, k, None) or (getattr(request, "headers", None) or {}).get(k))}
    cm = tracing.span(f"celery.task {getattr(task, 'name', '?')}", context=tracing.extract(carrier),
                      kind="consumer", **{"celery.task_id": task_id})
    cm.__enter__()
    _open[task_id] = cm


def _postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    cm = _open.pop(task_id or "", None)
    if cm is not None:
        cm.__exit__(None, None, None)


def _failure(task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
    cm = _open.get(task_id or "")
    if cm is not None and exception is not None:
        from opentelemetry import trace

        trace.get_current_span().record_exception(exception)
        trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, type(exception).__name__))


def instrument_celery(settings: Any) -> None:
    from celery import signals

    def start(**_: Any) -> None:
        tracing.configure(settings, service_name="palisade-worker")

    def stop(**_: Any) -> None:
        tracing.shutdown()

    signals.worker_process_init.connect(start, weak=False)
    signals.worker_init.connect(start, weak=False)  # the solo pool runs tasks in the main process
    signals.worker_process_shutdown.connect(stop, weak=False)
    signals.worker_shutdown.connect(stop, weak=False)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_failure.connect(_failure, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)

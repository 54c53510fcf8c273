"""Background jobs: one Celery configuration for every process, and the gateway's way to enqueue by task name.

The gateway never imports ``trainer``: it sends ``palisade.<domain>.<task>`` by name with ids as arguments, after
the database commit that made the work visible. Workers (``palisade worker``, or the one ``palisade serve`` starts
in embedded mode) build their app with ``trainer.celery_app.make_celery(settings)``, which adds the task modules.

Embedded default: kombu's ``sqla+sqlite`` broker and ``db+sqlite`` results in the data dir, so a fresh machine
needs no broker. Production: Redis (or RabbitMQ) from PALISADE_CELERY_BROKER_URL.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from gateway.observability import tracing
from gateway.observability.celery import instrument_celery
from gateway.settings import Settings

#: the longest job (a training run) must finish before a Redis broker would hand its message to another worker;
#: the database lease (trainer.runs) is what really guards against a second run, this only avoids the churn
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.celery_result_backend,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_acks_late": True,  # a crashed worker's job is redelivered, not lost
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # jobs are long: take one at a time
        "task_default_queue": "cpu",
        # a sweep only drives its trials (no device): it stays off the GPU workers
        "task_routes": {"palisade.train.sweep": {"queue": "cpu"}, "palisade.train.*": {"queue": "gpu"}},
        "broker_connection_retry_on_startup": True,
        "result_extended": True,
        "timezone": "UTC",
    }
    if settings.celery_broker_url.startswith(("redis://", "rediss://")):
        config["broker_transport_options"] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return config


#: every module that declares tasks (``@shared_task(name="palisade.<domain>.<task>")``), named, not imported: the
#: worker imports them, the gateway never does (it sends by name)
TASK_MODULES = ["trainer.tasks", "gateway.inference.tasks", "trainer.datasets.tasks", "trainer.runs.tasks",
                "gateway.batches.tasks", "gateway.ops.tasks", "trainer.evaluate.tasks"]


def make_worker_app(settings: Settings) -> Celery:
    """The worker's app: the shared configuration plus every task module."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite broker lives there in embedded mode
    app = Celery("palisade", include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    app.conf.beat_schedule = beat_schedule(settings)  # what `palisade worker --beat` sends, and when
    instrument_celery(settings)  # a span per task when PALISADE_OTEL_ENDPOINT is set
    return app


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """Scheduled tasks, by name: backups every PALISADE_BACKUP_INTERVAL_S, continuous evaluation of production
    versions every PALISADE_EVAL_INTERVAL_S, the runs reaper every PALISADE_REAP_INTERVAL_S (each none when 0)."""
    schedule: dict[str, Any] = {}
    for key, task, every in (("palisade-ops-backup", "palisade.ops.backup", settings.backup_interval_s),
                             ("palisade-eval-continuous", "palisade.eval.continuous", settings.eval_interval_s),
                             ("palisade-train-reap", "palisade.train.reap", settings.reap_interval_s)):
        if every > 0:
            schedule[key] = {"task": task, "schedule": every, "options": {"queue": "cpu"}}
    return schedule


def make_client(settings: Settings) -> Celery:
    """A Celery app that only sends (no task modules imported)."""
    app = Celery("palisade", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:  # lazily: a gateway that never enqueues never opens the broker
            self._app = make_client(self.settings)
        return self._app

    def enqueue(self, task: str, *args: Any, queue: str | None = None, task_id: str | None = None) -> str:
        """Send ``task`` by name; returns the Celery task id. Call after the commit that the task will read."""
        headers = dict(tracing.inject({})) or None  # the task's span joins the enqueuing request's trace
        result = self.app.send_task(task, args=list(args), queue=queue, task_id=task_id, headers=headers)
        return str(result.id)

"""The Celery app, configured from the same settings as the gateway.

Embedded default: kombu's ``sqla+sqlite`` broker and ``db+sqlite`` results in the data dir, so a fresh machine
needs no broker. Production: Redis (or RabbitMQ) from PALISADE_CELERY_BROKER_URL.
"""

from __future__ import annotations

from celery import Celery

from gateway.settings import get_settings

settings = get_settings()
settings.data_dir.mkdir(parents=True, exist_ok=True)

app = Celery("palisade", broker=settings.celery_broker_url, backend=settings.celery_result_backend,
             include=["trainer.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,  # a crashed worker's job is redelivered, not lost
    worker_prefetch_multiplier=1,  # training jobs are long: take one at a time
    task_default_queue="cpu",
    task_routes={"palisade.train.*": {"queue": "gpu"}},
    broker_connection_retry_on_startup=True,
    timezone="UTC",
)

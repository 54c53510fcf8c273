"""The worker's Celery app, from the settings: ``make_celery(settings)`` (``palisade worker`` builds it; so can
``celery -A 'trainer.celery_app:worker_app()' worker``). The configuration and the list of task modules live in
``gateway.jobs``, shared with the gateway, which only sends tasks by name. Nothing is read at import time.
"""

from __future__ import annotations

from celery import Celery

from gateway.jobs import make_worker_app
from gateway.settings import Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    return make_worker_app(settings)


def worker_app() -> Celery:
    return make_celery(get_settings())

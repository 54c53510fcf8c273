"""The worker's Celery app: ``make_celery(settings)`` adds the task modules to the shared configuration
(``gateway.jobs.celery_config``). Nothing is read or created at import time; ``palisade worker`` builds the app
from the settings (``celery -A 'trainer.celery_app:worker_app()'`` works too).
"""

from __future__ import annotations

from celery import Celery

from gateway.jobs import celery_config
from gateway.settings import Settings, get_settings

#: every module that declares tasks (``@shared_task(name="palisade.<domain>.<task>")``)
TASK_MODULES = ["trainer.tasks", "trainer.datasets.tasks"]


def make_celery(settings: Settings) -> Celery:
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the SQLite broker lives there in embedded mode
    app = Celery("palisade", include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    return app


def worker_app() -> Celery:
    return make_celery(get_settings())

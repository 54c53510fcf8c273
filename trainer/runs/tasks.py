"""Celery tasks of training runs: ids in, the executor out. The task process never touches CUDA.

``acks_late`` + ``reject_on_worker_lost``: a run whose worker dies is redelivered, not lost; the database lease
(trainer/runs/store.py) makes a redelivered or duplicated task a no-op while the first one is alive, and lets
it take over once the dead worker's lease expires. Prefetch 1 and a broker visibility timeout longer than the
longest run are set on the app (gateway/jobs.py). The executor runs on the worker process's services loop
(``gateway.runtime``): one run per worker process at a time.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import shared_task

from gateway.runtime import run_in_services


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def _execute(services, run_id: str) -> dict[str, Any]:
    from trainer.runs.execute import RunExecutor, open_local_dataset

    executor = RunExecutor(db=services.db, audit=services.audit, owner=_owner(), data_dir=services.settings.data_dir,
                           open_dataset=open_local_dataset(services.settings.data_dir))
    return await executor.execute(run_id)


async def _sweep(services, run_id: str) -> dict[str, Any]:
    from trainer.runs.sweep import SweepDriver

    driver = SweepDriver(db=services.db, audit=services.audit, owner=_owner(), enqueue=services.jobs.enqueue)
    return await driver.run(run_id)


@shared_task(name="palisade.train.run", acks_late=True, reject_on_worker_lost=True)
def train_run(run_id: str) -> dict[str, Any]:
    return run_in_services(lambda services: _execute(services, run_id))


@shared_task(name="palisade.train.sweep", acks_late=True, reject_on_worker_lost=True)
def train_sweep(run_id: str) -> dict[str, Any]:
    return run_in_services(lambda services: _sweep(services, run_id))

"""Celery tasks of training runs: ids in, the executor out. The task process never touches CUDA.

``acks_late`` + ``reject_on_worker_lost``: a run whose worker dies is redelivered, not lost; the database lease
(trainer/runs/store.py) makes a redelivered or duplicated task a no-op while the first one is alive, and lets
it take over once the dead worker's lease expires. Prefetch 1 and a broker visibility timeout longer than the
longest run are set on the app (trainer/celery_app.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
from contextlib import asynccontextmanager
from typing import Any

from celery import shared_task


@asynccontextmanager
async def _runtime():
    """Database + audit chain for one task (``gateway/runtime.py`` replaces this once it lands)."""
    from gateway.audit.chain import AuditChain
    from gateway.crypto import open_keyring
    from gateway.db.session import Database
    from gateway.settings import get_settings

    settings = get_settings()
    db = Database(settings)
    chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
    try:
        yield settings, db, chain
    finally:
        await chain.close()
        await db.close()


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def _execute(run_id: str) -> dict[str, Any]:
    from trainer.runs.execute import RunExecutor, open_local_dataset

    async with _runtime() as (settings, db, chain):
        executor = RunExecutor(db=db, audit=chain, owner=_owner(), data_dir=settings.data_dir,
                               open_dataset=open_local_dataset(settings.data_dir))
        return await executor.execute(run_id)


async def _sweep(run_id: str) -> dict[str, Any]:
    from celery import current_app

    from trainer.runs.sweep import SweepDriver

    async with _runtime() as (_settings, db, chain):
        driver = SweepDriver(db=db, audit=chain, owner=_owner(),
                             enqueue=lambda name, *args: current_app.send_task(name, args=list(args)))
        return await driver.run(run_id)


@shared_task(name="palisade.train.run", acks_late=True, reject_on_worker_lost=True)
def train_run(run_id: str) -> dict[str, Any]:
    return asyncio.run(_execute(run_id))


@shared_task(name="palisade.train.sweep", acks_late=True, reject_on_worker_lost=True)
def train_sweep(run_id: str) -> dict[str, Any]:
    return asyncio.run(_sweep(run_id))

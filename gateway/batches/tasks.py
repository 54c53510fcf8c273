"""Celery tasks of the batch domain: ids in, a runner or service call out. Names are stable (``palisade.batches.*``).

``run`` is idempotent: any number of deliveries of the same batch id (a redelivery after a crash, the start-up
scan, a cancel) end up with one runner holding the batch's lease; the others retry later or find it finished.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import shared_task
from celery.signals import worker_ready

from gateway.batches import worker

_log = structlog.get_logger("palisade.batches.tasks")


def _runner(services: Any) -> Any:
    from gateway.batches.executor import ServicesExecutor
    from gateway.batches.runner import BatchRunner
    from gateway.batches.service import principal_from
    from gateway.batches.storage import FileStore

    store = FileStore(services.settings.data_dir / "files", services.keyring)
    return BatchRunner(db=services.db, store=store, audit=services.audit, settings=services.settings,
                       executor_for=lambda b: ServicesExecutor(services, principal_from(b.principal), b.endpoint))


@shared_task(name="palisade.batches.run", bind=True, acks_late=True, max_retries=None)
def run(self: Any, batch_id: str) -> str:
    """Drive one batch to a final state (or as far as this worker lives)."""

    async def go(services: Any) -> str:
        return await _runner(services).run(batch_id)

    status = worker.call(go)
    if status == "busy":  # another runner holds the lease: look again once it could have run out
        lease = worker.call(_lease_s)
        raise self.retry(countdown=lease)
    return status


async def _lease_s(services: Any) -> float:
    return float(services.settings.batch_lease_s)


@shared_task(name="palisade.batches.resume")
def resume() -> list[str]:
    """Re-enqueue every unfinished batch (after a worker start: a killed worker's batches carry on)."""

    async def go(services: Any) -> list[str]:
        from sqlalchemy import select

        from gateway.batches.models import Batch
        from gateway.batches.service import ACTIVE

        async with services.db.session() as s:
            return list((await s.execute(select(Batch.id).where(Batch.status.in_(ACTIVE)))).scalars())

    ids = worker.call(go)
    for batch_id in ids:
        run.apply_async((batch_id,))
    return ids


@shared_task(name="palisade.batches.sweep")
def sweep() -> int:
    """Delete files past their retention period."""

    async def go(services: Any) -> int:
        from gateway.batches.wiring import file_service

        return await file_service(services).sweep()

    return worker.call(go)


@worker_ready.connect
def _resume_on_start(sender: Any = None, **_: Any) -> None:
    try:
        resume.apply_async()
    except Exception as exc:  # a broker hiccup at start must not stop the worker
        _log.warning("could not enqueue batch resume", error=type(exc).__name__)

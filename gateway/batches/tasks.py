"""Celery tasks of the batch domain: ids in, a runner or service call out. Names are stable (``palisade.batches.*``).

``run`` is idempotent: any number of deliveries of the same batch id (a redelivery after a crash, the start-up
scan, a cancel) end up with one runner holding the batch's lease; the others retry later or find it finished.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import shared_task
from celery.signals import worker_ready
from sqlalchemy import select

from gateway.batches.executor import ServicesExecutor
from gateway.batches.runner import BatchRunner
from gateway.batches.service import ACTIVE
from gateway.batches.wiring import BatchDomain
from gateway.db.batches import Batch
from gateway.runtime import run_in_services
from gateway.services import Services

_log = structlog.get_logger("palisade.batches.tasks")
_domains: dict[int, BatchDomain] = {}  # id(services) -> the domain built on them (one per worker process)


async def _domain(services: Services) -> BatchDomain:
    domain = _domains.get(id(services))
    if domain is None:
        domain = _domains[id(services)] = await BatchDomain.open(services)
    return domain


async def run_batch(services: Services, batch_id: str) -> str:
    domain = await _domain(services)

    async def executor_for(batch: Batch) -> ServicesExecutor:
        return await ServicesExecutor.for_owner(services, batch.owner, batch.endpoint)

    runner = BatchRunner(db=services.db, store=domain.store, audit=services.audit, settings=services.settings,
                         executor_for=executor_for)
    return await runner.run(batch_id)


@shared_task(name="palisade.batches.run", bind=True, acks_late=True, max_retries=None)
def run(self: Any, batch_id: str) -> str:
    """Drive one batch to a final state (or as far as this worker lives)."""
    status = run_in_services(lambda s: run_batch(s, batch_id))
    if status == "busy":  # another runner holds the lease: look again once it could have run out
        raise self.retry(countdown=run_in_services(_lease_s))
    return status


async def _lease_s(services: Services) -> float:
    return float(services.settings.batch_lease_s)


@shared_task(name="palisade.batches.resume")
def resume() -> list[str]:
    """Re-enqueue every unfinished batch (after a worker start: a killed worker's batches carry on)."""

    async def unfinished(services: Services) -> list[str]:
        async with services.db.session() as s:
            return list((await s.execute(select(Batch.id).where(Batch.status.in_(ACTIVE)))).scalars())

    ids = run_in_services(unfinished)
    for batch_id in ids:
        run.apply_async((batch_id,))
    return ids


@shared_task(name="palisade.batches.sweep")
def sweep() -> int:
    """Delete files past their retention period."""

    async def go(services: Services) -> int:
        return await (await _domain(services)).files.sweep()

    return run_in_services(go)


@worker_ready.connect
def _resume_on_start(sender: Any = None, **_: Any) -> None:
    try:
        resume.apply_async()
        sweep.apply_async()  # retention: each worker start deletes expired files (also `palisade batches sweep`)
    except Exception as exc:  # a broker hiccup at start must not stop the worker
        _log.warning("could not enqueue batch resume", error=type(exc).__name__)

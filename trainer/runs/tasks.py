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


def _dataset_opener(services):
    """An approved version's records from the datasets domain (decrypted shards, digest checked against the
    approval); an operator's JSONL export under the data dir when there is one for that id."""
    from trainer.runs.data import MemorySource
    from trainer.runs.execute import open_local_dataset

    local = open_local_dataset(services.settings.data_dir)

    async def open_(version_id: str):
        from gateway.datasets.service import iter_records

        if (services.settings.data_dir / "datasets" / version_id / "train.jsonl").exists():
            return local(version_id)
        splits, digest = {}, ""
        for split in ("train", "validation"):
            info, records = await iter_records(services.datasets, version_id, split)
            splits[split], digest = list(records), info["digest"]
        return MemorySource(splits, digest)

    return open_


def _base_resolver(services):
    """A registry version id -> its artifact directory; presets and directories as ``resolve_base`` says."""
    from trainer.runs.execute import resolve_base

    async def resolve(base: str | None, method: str) -> str | None:
        if base is None or base.startswith("preset:") or "/" in base:
            return resolve_base(base, method)
        from gateway.db.registry import ModelVersion

        async with services.db.session() as s:
            row = await s.get(ModelVersion, base)
        if row is None or not row.artifact:
            raise LookupError(f"no model version {base} in the registry")
        return resolve_base(row.artifact, method)

    return resolve


async def _execute(services, run_id: str) -> dict[str, Any]:
    from gateway.context import Principal, RequestContext
    from trainer.runs.baseline import production_metrics_from
    from trainer.runs.execute import RunExecutor

    system = RequestContext.for_principal(Principal(id="system:trainer", kind="app", name="trainer",
                                                    auth_method="cli"))
    executor = RunExecutor(db=services.db, audit=services.audit, owner=_owner(), data_dir=services.settings.data_dir,
                           open_dataset=_dataset_opener(services), registry=services.models.registry, ctx=system,
                           resolve_base=_base_resolver(services),
                           production_metrics=production_metrics_from(services.db))
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


async def _reap(services) -> dict[str, Any]:
    from gateway.audit.events import AuditEvent, Tag
    from trainer.runs.store import reap_expired

    reaped = await reap_expired(services.db)
    for run_id, kind in reaped:
        services.jobs.enqueue("palisade.train.sweep" if kind == "sweep" else "palisade.train.run", run_id)
        await services.audit.record(AuditEvent(tag=Tag.RUN_REQUEUE, actor="system:reaper", target=f"run:{run_id}",
                                               details={"reason": "lease expired while running", "kind": kind}))
    return {"requeued": [run_id for run_id, _ in reaped]}


@shared_task(name="palisade.train.reap")
def reap_runs() -> dict[str, Any]:
    """Beat: re-enqueue runs whose worker died (lease expired while ``running``); see ``store.reap_expired``."""
    return run_in_services(_reap)

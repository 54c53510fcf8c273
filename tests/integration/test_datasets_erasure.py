"""Deleting a dataset version (retention, right to erasure) marks the training runs that used it: the run's
``reproducibility`` gains ``dataset_deleted_at`` and its event log a ``dataset_deleted`` event; other runs are
untouched; the audit event names the runs. Embedded SQLite and Postgres (JSON vs JSONB)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.context import Principal, RequestContext
from gateway.db.base import new_id, utcnow
from gateway.db.datasets import Dataset, DatasetVersion
from gateway.db.migrate import upgrade
from gateway.db.runs import TrainingRun, TrainingRunEvent
from gateway.runs.service import RunService
from gateway.runtime import open_services
from gateway.settings import Settings
from tests.support.server import base_env

pytestmark = [pytest.mark.asyncio(loop_scope="session")]
ALICE = RequestContext(Principal(id="user:alice", kind="user", name="alice", auth_method="session",
                                 roles=("ml_engineer",), mfa_at=utcnow()))


def _run(dataset_id: str, **repro) -> TrainingRun:
    return TrainingRun(id=new_id(), dataset_id=dataset_id, method="lora", requester="user:alice",
                       request_digest="0" * 64, status="succeeded", reproducibility=repro)


async def _erase_marks_runs(settings: Settings) -> None:
    upgrade(settings)
    async with open_services(settings) as services:
        async with services.db.session() as s:
            ds = Dataset(id=new_id(), name=f"erase-{new_id()[:6]}", owner="user:alice")
            s.add(ds)
            await s.flush()
            kept = DatasetVersion(id=new_id(), dataset_id=ds.id, number=1, status="approved", owner="user:alice")
            gone = DatasetVersion(id=new_id(), dataset_id=ds.id, number=2, status="approved", owner="user:alice")
            s.add_all([kept, gone])
            await s.flush()
            used, other = _run(gone.id, seed=7), _run(kept.id, seed=8)
            s.add_all([used, other])
        (services.datasets.store.root / gone.id).mkdir(parents=True, exist_ok=True)  # a shard folder to remove

        view = await services.datasets.delete(ALICE, gone.id)
        assert view.deleted

        async with services.db.session() as s:
            marked = await s.get(TrainingRun, used.id)
            untouched = await s.get(TrainingRun, other.id)
            events = (await s.scalars(select(TrainingRunEvent).where(TrainingRunEvent.run_id == used.id))).all()
        assert marked.reproducibility["seed"] == 7  # what was there stays
        assert marked.reproducibility["dataset_deleted_at"] and marked.reproducibility["dataset_deleted_by"] == \
            "user:alice"
        assert "dataset_deleted_at" not in untouched.reproducibility
        assert [(e.type, e.data["dataset"]) for e in events] == [("dataset_deleted", gone.id)]
        assert RunService.view(marked).reproducibility["dataset_deleted_at"]  # what `palisade runs show` prints


async def test_erasure_marks_runs_sqlite(tmp_path):
    await _erase_marks_runs(Settings.from_env(base_env(tmp_path)))


@pytest.mark.postgres
async def test_erasure_marks_runs_postgres(tmp_path, pg_url):
    await _erase_marks_runs(Settings.from_env(base_env(tmp_path, PALISADE_DATABASE_URL=pg_url)))

"""Governed runs against real Postgres, Redis (db 11) and a real Celery worker: approval rules, a duplicated
task trains once, cancel ends ``cancelled`` with a checkpoint, a two-trial sweep picks the better trial."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from msgspec.structs import replace
from sqlalchemy import create_engine, func, select

from gateway.context import Principal, RequestContext
from gateway.db.base import utcnow
from gateway.db.runs import TrainingRun, TrainingRunEvent
from gateway.errors import ApiError, Conflict, Forbidden, NotFound
from gateway.runs.service import TASK_RUN, Gate, RunCreate, RunService
from tests.support.server import ROOT, base_env
from tests.support.training_data import chat_rows, insert_dataset_versions
from trainer.runs.data import write_jsonl_source

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(600),
              pytest.mark.asyncio(loop_scope="session")]
REDIS_DB = "redis://127.0.0.1:6379/11"


def person(name: str, *roles: str, fresh: bool = True, method: str = "session") -> RequestContext:
    return RequestContext(Principal(id=f"user:{name}", kind="user", name=name, auth_method=method, roles=roles,
                                    mfa_at=utcnow() if fresh else utcnow() - timedelta(hours=1)))


# made at each use: a context's MFA time is "now" when the test acts, however late in the suite it runs
def ALICE() -> RequestContext:  # noqa: N802
    return person("alice", "ml_engineer")


def BOB() -> RequestContext:  # noqa: N802
    return person("bob", "approver")


def CAROL() -> RequestContext:  # noqa: N802
    return person("carol", "ml_engineer")


@pytest.fixture(scope="module")
def env(pg_url, tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("palisade")
    env = base_env(data_dir, PALISADE_DATABASE_URL=pg_url, PALISADE_CELERY_BROKER_URL=REDIS_DB,
                   PALISADE_CELERY_RESULT_BACKEND=REDIS_DB)
    redis.Redis.from_url(REDIS_DB).flushdb()
    from alembic import command
    from gateway.db.migrate import alembic_config

    command.upgrade(alembic_config(pg_url), "head")
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        insert_dataset_versions(conn, {"dsapproved": "approved", "dsready": "ready"})
    engine.dispose()
    write_jsonl_source(data_dir / "datasets" / "dsapproved", {"train": chat_rows(), "validation": chat_rows()[:4]})
    return env | {"data_dir": str(data_dir), "tiny": str(tiny_model_dir)}


@pytest.fixture(scope="module")
def worker(env):
    args = [sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu,gpu", "--concurrency", "2"]
    proc = subprocess.Popen(args, env={k: v for k, v in env.items() if k not in ("data_dir", "tiny")}, cwd=ROOT,
                            stdout=open(Path(env["data_dir"]) / "celery.log", "wb"), stderr=subprocess.STDOUT)
    yield proc
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture
async def services(env, monkeypatch):
    for k, v in env.items():
        if k.startswith("PALISADE_"):
            monkeypatch.setenv(k, v)
    from gateway.runtime import open_services
    from gateway.settings import Settings

    async with open_services(Settings.from_env()) as services:
        sent: list[tuple] = []

        def enqueue(name, *args):
            sent.append((name, *args))
            return services.jobs.enqueue(name, *args)

        yield RunService(services.db, services.audit, enqueue), services.db, sent, services.jobs


def _request(env, **config) -> RunCreate:
    return RunCreate(dataset="dsapproved", method="sft-lora", base=env["tiny"],
                     config={"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "lora_rank": 4,
                             "eval_every": 3, "checkpoint_every": 2, **config},
                     gates=[Gate(metric="eval_loss", op="<=", threshold=100.0)])


async def _wait(service, run_id, pred, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = await service.get(BOB(), run_id)
        if pred(view):
            return view
        await asyncio.sleep(0.5)
    raise AssertionError(f"run {run_id} stuck at {view.status}: {view.error}")


async def test_approval_rules(env, services):
    service, db, sent, _jobs = services
    with pytest.raises(Conflict, match="not approved"):
        await service.create(ALICE(), replace(_request(env), dataset="dsready"))
    with pytest.raises(NotFound):
        await service.create(ALICE(), replace(_request(env), dataset="nosuch"))
    run = await service.create(ALICE(), _request(env))
    assert run.status == "awaiting_approval"
    with pytest.raises(Forbidden) as self_approval:
        await service.approve(ALICE(), run.id)
    assert self_approval.value.status_code == 403 and "requester" in str(self_approval.value)
    with pytest.raises(Forbidden, match="multi-factor"):
        await service.approve(person("bob", "approver", fresh=False), run.id)
    with pytest.raises(Forbidden, match="session"):
        await service.approve(person("bob", "approver", method="api_key"), run.id)
    with pytest.raises(NotFound):
        await service.get(CAROL(), run.id)
    with pytest.raises(Conflict, match="changed"):
        await service.approve(BOB(), run.id, digest="0" * 64)
    assert sent == []

    # a request changed after approval is refused by the task (the approval is bound to the digest)
    from trainer.runs.execute import RunExecutor, open_local_dataset

    approved = await service.approve(BOB(), run.id)
    assert approved.status == "queued" and sent == [(TASK_RUN, run.id)]
    async with db.session() as s:
        row = await s.get(TrainingRun, run.id)
        row.config = {**row.config, "learning_rate": 1.0}
        row.lease_owner, row.lease_until = "test-hold", utcnow() + timedelta(minutes=5)  # keep the worker off it
    async with db.session() as s:
        row = await s.get(TrainingRun, run.id)
        row.lease_owner = None
        row.lease_until = None
    executor = RunExecutor(db=db, audit=service.audit, owner="test", data_dir=Path(env["data_dir"]),
                           open_dataset=open_local_dataset(Path(env["data_dir"])))
    out = await executor.execute(run.id)
    if not out.get("skipped"):
        assert out["status"] == "failed"
    view = await _wait(service, run.id, lambda v: v.status == "failed")
    assert "approval" in view.error
    with pytest.raises(ApiError):
        await service.cancel(ALICE(), run.id)


async def test_cli_create_show_list_cancel(env, tmp_path):
    """The CLI contract: the run id alone on the last line; show/list/cancel print one JSON object."""
    import json

    from tests.support.server import cli

    cenv = {k: v for k, v in env.items() if k not in ("data_dir", "tiny")}
    config = tmp_path / "run.yaml"
    config.write_text("config:\n  eval_every: 2\ngates:\n  - {metric: eval_loss, op: '<=', threshold: 3.0}\n")
    out = cli(cenv, "runs", "create", "--dataset", "dsapproved", "--method", "sft-lora", "--base", env["tiny"],
              "--config", str(config), "--set", "max_steps=3", "--set", "learning_rate=1e-3")
    run_id = out.stdout.strip().splitlines()[-1]
    assert len(run_id) == 32
    shown = json.loads(cli(cenv, "runs", "show", run_id).stdout.strip().splitlines()[-1])
    assert shown["status"] == "awaiting_approval" and shown["metrics"]["loss"] == []
    assert shown["config"] == {"eval_every": 2, "max_steps": 3, "learning_rate": 1e-3}
    assert shown["gates"][0]["threshold"] == 3.0 and shown["candidate_version"] is None
    listed = json.loads(cli(cenv, "runs", "list").stdout.strip().splitlines()[-1])
    assert run_id in [r["id"] for r in listed["runs"]]
    cancelled = json.loads(cli(cenv, "runs", "cancel", run_id).stdout.strip().splitlines()[-1])
    assert cancelled == {"id": run_id, "status": "cancelled"}
    bad = cli(cenv, "runs", "create", "--dataset", "dsready", "--method", "sft-lora", check=False)
    assert bad.returncode != 0 and "not approved" in bad.stderr


async def test_lease_admits_one_worker_and_passes_to_another_when_it_dies(env, services):
    """The database lease: a second claim fails while the first holder is alive; after its lease lapses (a dead
    worker stops heartbeating) another worker takes the run over, and the stale one can no longer write."""
    from trainer.runs.store import RunStore

    _service, db, _sent, _jobs = services
    async with db.session() as s:
        row = TrainingRun(dataset_id="dsapproved", method="sft-lora", config={}, gates=[], requester="user:alice",
                          request_digest="x", status="queued")
        s.add(row)
        await s.flush()
        run_id = row.id
    first, second = RunStore(db, "worker-a", timedelta(seconds=1)), RunStore(db, "worker-b")
    assert (await first.claim(run_id)).lease_owner == "worker-a"
    assert await second.claim(run_id) is None
    assert (await second.heartbeat(run_id))[0] is False
    await asyncio.sleep(1.5)  # worker-a died: no heartbeat
    taken = await second.claim(run_id)
    assert taken.lease_owner == "worker-b" and taken.attempts == 2 and taken.status == "running"
    assert (await first.heartbeat(run_id))[0] is False
    assert await first.finish(run_id, "failed") is False  # a stale worker cannot overwrite the outcome
    assert await second.finish(run_id, "succeeded") is True


async def test_duplicated_task_trains_once(env, services, worker):
    service, db, _sent, jobs = services
    run = await service.create(ALICE(), _request(env))
    await service.approve(BOB(), run.id)  # sends the task once...
    jobs.enqueue(TASK_RUN, run.id)  # ...and a duplicate delivery
    view = await _wait(service, run.id, lambda v: v.status in ("succeeded", "failed"))
    assert view.status == "succeeded", view.error
    await asyncio.sleep(3)  # let the duplicate finish its (skipped) attempt
    async with db.session() as s:
        starts = await s.scalar(select(func.count()).select_from(TrainingRunEvent)
                                .where(TrainingRunEvent.run_id == run.id, TrainingRunEvent.type == "start"))
        row = await s.get(TrainingRun, run.id)
    assert starts == 1 and row.attempts == 1
    assert len(view.metrics["loss"]) == 6 and view.metrics["loss"][-1] < view.metrics["loss"][0]
    assert view.gates[0]["passed"] is True and view.candidate["files"]
    assert view.reproducibility["dataset_digest"] and view.reproducibility["libraries"]["torch"]


async def test_cancel_ends_cancelled_with_checkpoint(env, services, worker):
    service, _db, _sent, _jobs = services
    run = await service.create(ALICE(), _request(env, max_steps=100_000, checkpoint_every=100_000))
    await service.approve(BOB(), run.id)
    await _wait(service, run.id, lambda v: v.metrics.get("step", 0) >= 1)
    await service.cancel(ALICE(), run.id)
    view = await _wait(service, run.id, lambda v: v.status in ("cancelled", "failed", "succeeded"))
    assert view.status == "cancelled"
    assert (Path(env["data_dir"]) / "runs" / run.id / "checkpoint" / "state.json").exists()


async def test_two_trial_sweep_picks_the_better_trial(env, services, worker):
    service, _db, _sent, _jobs = services
    body = replace(_request(env, max_steps=6, eval_every=0),
                   sweep={"trials": 2, "sampler": "grid", "pruner": "none",
                          "parameters": {"learning_rate": {"type": "categorical", "choices": [1e-6, 2e-2]}}})
    sweep = await service.create(ALICE(), body)
    assert sweep.kind == "sweep"
    await service.approve(BOB(), sweep.id)  # one approval for the whole sweep
    view = await _wait(service, sweep.id, lambda v: v.status in ("succeeded", "failed", "cancelled"), timeout=400)
    assert view.status == "succeeded", view.error
    assert len(view.trials) == 2 and all(t["status"] == "succeeded" for t in view.trials)
    best = min(view.trials, key=lambda t: t["eval_loss"])
    assert best["config"]["learning_rate"] == 2e-2
    assert view.metrics["best_trial"] == best["id"] == view.candidate["trial"]

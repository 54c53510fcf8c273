"""Production numbers in training runs and after: relative gates against the registry's production version,
continuous evaluation (feedback drift, re-measured metrics, history, audit, Prometheus), and the runs reaper.

Real Postgres, Redis (db 3) and a real Celery worker (cpu queue) for the beat tasks' entry points.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, select

from gateway.db.audit import AuditRecord
from gateway.db.base import utcnow
from gateway.db.batches import Feedback
from gateway.db.registry import ModelAlias, ModelVersion, RegisteredModel
from gateway.db.runs import TrainingRun
from gateway.metrics import REGISTRY
from gateway.models.evaluations import HISTORY_KEY, Thresholds, check_production, evaluations, feedback_rate
from tests.support.server import ROOT, base_env
from trainer.runs.baseline import production_baseline, production_metrics_from
from trainer.runs.execute import RunExecutor, open_local_dataset
from trainer.runs.store import RunStore, reap_expired
from trainer.runs.worker import EXIT_OK

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300),
              pytest.mark.asyncio(loop_scope="session")]
REDIS_DB = "redis://127.0.0.1:6379/3"
PPL_GATE = {"metric": "perplexity", "op": "<=", "threshold": 0.02, "relative": "ratio"}


@pytest.fixture(scope="module")
def env(pg_url, tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("palisade")
    env = base_env(data_dir, PALISADE_DATABASE_URL=pg_url, PALISADE_CELERY_BROKER_URL=REDIS_DB,
                   PALISADE_CELERY_RESULT_BACKEND=REDIS_DB, PALISADE_EVAL_MIN_FEEDBACK="5",
                   PALISADE_EVAL_INTERVAL_S="3600")
    redis.Redis.from_url(REDIS_DB).flushdb()
    from alembic import command
    from gateway.db.migrate import alembic_config

    command.upgrade(alembic_config(pg_url), "head")
    return env | {"data_dir": str(data_dir), "tiny": str(tiny_model_dir)}


@pytest.fixture
async def services(env, monkeypatch):
    for k, v in env.items():
        if k.startswith("PALISADE_"):
            monkeypatch.setenv(k, v)
    from gateway.runtime import open_services
    from gateway.settings import Settings

    async with open_services(Settings.from_env()) as services:
        yield services


def _production(env, alias: str, metrics: dict) -> str:
    """A model with one version in production behind ``alias`` (rows as the registry writes them)."""
    engine = create_engine(env["PALISADE_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
    mid, vid = secrets.token_hex(8), secrets.token_hex(8)
    with engine.begin() as conn:
        conn.execute(RegisteredModel.__table__.insert().values(id=mid, name=f"model-{alias}", classification="internal",
                                                               created_at=utcnow()))
        conn.execute(ModelVersion.__table__.insert().values(
            id=vid, model_id=mid, number=1, kind="transformers", artifact=env["tiny"], files={}, digest="0" * 64,
            source="import", created_by="user:alice", spec={}, eval_results=metrics, gates={}, gates_passed=True,
            status="production", status_changed_at=utcnow(), created_at=utcnow()))
        conn.execute(ModelAlias.__table__.insert().values(id=secrets.token_hex(8), name=alias, model_id=mid,
                                                          version_id=vid, principals=[], generation=1,
                                                          updated_at=utcnow(), created_at=utcnow()))
    engine.dispose()
    return vid


async def _run(db, **fields) -> TrainingRun:
    row = TrainingRun(dataset_id="ds", method="sft-lora", requester="user:alice", request_digest="x" * 64,
                      status="running", lease_owner="test", lease_until=utcnow() + timedelta(minutes=5), **fields)
    async with db.session() as s:
        s.add(row)
    return row


async def _finish_with(services, env, run, perplexity: float) -> TrainingRun:
    """The executor's end of a run (gates, evaluation, final status) on a training result with ``perplexity``."""
    run_dir = Path(env["data_dir"]) / "runs" / run.id
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({
        "eval_loss": 2.0, "perplexity": perplexity, "losses": [2.5, 2.0], "evaluation": {}, "output_dir": None,
        "reproducibility": {"seed": 1}, "config": {}}))
    executor = RunExecutor(db=services.db, audit=services.audit, owner="test", data_dir=Path(env["data_dir"]),
                           open_dataset=open_local_dataset(Path(env["data_dir"])),
                           production_metrics=production_metrics_from(services.db))
    out = await executor._finish(run, run_dir, EXIT_OK, {"cancel": False, "end": None})
    assert out["status"] == "succeeded"
    return await RunStore(services.db, "test").get(run.id)


async def test_relative_gate_compares_with_the_production_version(env, services):
    vid = _production(env, "assistant", {"perplexity": 10.0, "eval_loss": 2.3})
    worse = await _finish_with(services, env, await _run(services.db, config={"alias": "assistant"}, gates=[PPL_GATE]),
                               perplexity=10.5)
    [gate] = worse.gate_results
    assert gate["passed"] is False and gate["production"] == 10.0 and gate["bound"] == pytest.approx(10.2)
    assert worse.candidate["gates_passed"] is False
    assert worse.evaluation["perplexity"] == 10.5  # the candidate's numbers ...
    assert worse.evaluation["production"]["version"] == vid  # ... beside production's
    assert worse.evaluation["production"]["metrics"]["perplexity"] == 10.0

    better = await _finish_with(services, env, await _run(services.db, config={"alias": "assistant"}, gates=[PPL_GATE]),
                                perplexity=10.1)
    assert better.gate_results[0]["passed"] is True

    # no alias: the production version of the base model (a registry version id) is the baseline
    by_base = await production_baseline(services.db, await _run(services.db, base=vid, config={}))
    assert by_base["version"] == vid and by_base["metrics"]["perplexity"] == 10.0
    # nothing in production to compare with: the gate passes and says why
    first = await _finish_with(services, env, await _run(services.db, config={"alias": "nosuch"}, gates=[PPL_GATE]),
                               perplexity=50.0)
    assert first.gate_results[0]["passed"] is True and "no production" in first.gate_results[0]["reason"]
    assert first.evaluation["production"] is None


async def _feedback(db, alias: str, version: str, ratings: list[str]) -> None:
    scores = {"up": 1.0, "down": 0.0}
    async with db.session() as s:
        for r in ratings:
            s.add(Feedback(id=secrets.token_hex(8), request_id=secrets.token_hex(8), actor="app:x", rater="app:x",
                           model=alias, model_version=version, rating=r,
                           score=scores.get(r, (int(r) - 1) / 4 if r.isdigit() else 0.5)))


def _drift_count(alias: str, kind: str) -> float:
    return REGISTRY.get_sample_value("palisade_eval_drift_total", {"alias": alias, "kind": kind}) or 0.0


async def test_feedback_drift_is_audited_counted_and_kept_in_history(env, services):
    bad = _production(env, "drifty", {"perplexity": 9.0})
    good = _production(env, "steady", {"perplexity": 9.0})
    await _feedback(services.db, "drifty", bad, ["down", "down", "down", "up", "down", "up"])
    await _feedback(services.db, "drifty", "other-version", ["up"] * 10)  # another version's ratings don't count
    await _feedback(services.db, "steady", good, ["up", "up", "5", "4", "down", "up"])
    rate = await feedback_rate(services.db, "drifty", bad, utcnow() - timedelta(hours=1))
    assert rate == {"count": 6, "down": 4, "down_rate": pytest.approx(0.6667), "mean_score": pytest.approx(0.3333)}

    before = _drift_count("drifty", "feedback")
    results = {r["alias"]: r for r in await check_production(services.db, services.audit, Thresholds(min_feedback=5))}
    assert results["drifty"]["drift"] and not results["steady"]["drift"]
    assert _drift_count("drifty", "feedback") == before + 2  # down share and mean score both past their limits
    assert REGISTRY.get_sample_value("palisade_eval_feedback_down_rate", {"alias": "drifty"}) == pytest.approx(0.6667)
    async with services.db.session() as s:
        events = (await s.scalars(select(AuditRecord).where(AuditRecord.tag == "eval:production:drift"))).all()
    assert [e.target for e in events] == [f"version:{bad}"]

    # too few ratings: no verdict
    assert not [r for r in await check_production(services.db, services.audit, Thresholds(min_feedback=50))
                if r.get("drift")]
    history = {v["id"]: v for v in (await evaluations(services.db, "model-drifty"))["versions"]}[bad]
    assert len(history["history"]) == 2 and history["history"][0]["feedback"]["down"] == 4
    assert history["recorded"] == {"perplexity": 9.0}  # the history does not leak into the recorded evaluation
    assert (await production_baseline(services.db, await _run(services.db, config={"alias": "drifty"})))[
        "metrics"] == {"perplexity": 9.0}


@pytest.fixture(scope="module")
def worker(env):
    args = [sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu", "--concurrency", "1"]
    proc = subprocess.Popen(args, env={k: v for k, v in env.items() if k not in ("data_dir", "tiny")}, cwd=ROOT,
                            stdout=open(Path(env["data_dir"]) / "celery.log", "wb"), stderr=subprocess.STDOUT)
    yield proc
    proc.terminate()
    proc.wait(timeout=60)


async def test_continuous_task_remeasures_on_the_evaluation_set(env, services, worker):
    """The beat task through a real worker: the tiny model's perplexity on ``evaluations/<alias>.jsonl``; the
    first measurement is the reference, a later one far worse than a reference is drift."""
    from gateway.jobs import beat_schedule

    assert beat_schedule(services.settings)["palisade-eval-continuous"]["task"] == "palisade.eval.continuous"
    vid = _production(env, "measured", {"perplexity": 7.0})
    sets = Path(env["data_dir"]) / "evaluations"
    sets.mkdir(exist_ok=True)
    (sets / "measured.jsonl").write_text("\n".join(json.dumps({"prompt": f"What is {i} plus {i}?",
                                                               "completion": f"It is {2 * i}."}) for i in range(4)))
    out = services.jobs.app.send_task("palisade.eval.continuous", queue="cpu").get(timeout=180)
    assert "measured" not in out["drifting"] and not out["errors"]
    async with services.db.session() as s:
        first = (await s.get(ModelVersion, vid)).eval_results[HISTORY_KEY][-1]
    measured = first["metrics"]["perplexity"]
    assert measured["value"] > 1 and measured["reference"] is None and measured["recorded"] == 7.0

    # a reference far better than today (as if the model had degraded since): drift on the metric
    async with services.db.session() as s:
        row = await s.get(ModelVersion, vid)
        history = [{**first, "metrics": {"perplexity": {"value": measured["value"] / 2}}}]
        row.eval_results = {"perplexity": 7.0, HISTORY_KEY: history}
    out = services.jobs.app.send_task("palisade.eval.continuous", queue="cpu").get(timeout=180)
    assert "measured" in out["drifting"]
    async with services.db.session() as s:
        last = (await s.get(ModelVersion, vid)).eval_results[HISTORY_KEY][-1]
    assert last["drift"] and "perplexity" in last["drift"][0]
    assert last["metrics"]["perplexity"]["value"] == pytest.approx(measured["value"])  # deterministic


async def test_reaper_requeues_only_runs_whose_lease_expired(env, services, worker):
    db = services.db
    dead = await _run(db, config={})
    live = await _run(db, config={})
    queued = await _run(db, config={})
    async with db.session() as s:
        (await s.get(TrainingRun, dead.id)).lease_until = utcnow() - timedelta(seconds=1)
        (await s.get(TrainingRun, live.id)).lease_owner = "alive"
        q = await s.get(TrainingRun, queued.id)
        q.status, q.lease_owner, q.lease_until = "queued", None, None

    reaped = await reap_expired(db)
    assert [r for r, _ in reaped if r in (dead.id, live.id, queued.id)] == [dead.id]
    assert not [r for r, _ in await reap_expired(db) if r == dead.id]  # released once, not re-sent every pass
    # the dead worker wakes up: its lease is gone, it stops; the re-sent task claims the run exactly once
    assert await RunStore(db, "test").heartbeat(dead.id) == (False, False)
    assert await RunStore(db, "new-owner").claim(dead.id) is not None
    assert await RunStore(db, "third").claim(dead.id) is None
    assert await RunStore(db, "third").claim(live.id) is None  # a live run is never taken
    # released but never claimed (no worker took the message) for a whole lease: handed out again
    async with db.session() as s:
        row = await s.get(TrainingRun, live.id)
        row.lease_owner, row.lease_until = None, utcnow() - timedelta(minutes=5)
    assert live.id in [r for r, _ in await reap_expired(db)]

    # the beat task's entry point through the worker: re-sent by name, audited
    async with db.session() as s:
        (await s.get(TrainingRun, dead.id)).lease_until = utcnow() - timedelta(seconds=1)
    out = services.jobs.app.send_task("palisade.train.reap", queue="cpu").get(timeout=120)
    assert dead.id in out["requeued"]
    async with db.session() as s:
        events = (await s.scalars(select(AuditRecord).where(AuditRecord.tag == "training:run:requeue",
                                                            AuditRecord.target == f"run:{dead.id}"))).all()
    assert len(events) == 1


async def test_evaluations_api_is_guarded(env, services, tmp_path, tiny_models_file):
    import httpx

    from tests.support.people import login
    from tests.support.server import GatewayProcess, create_key

    vid = _production(env, "served", {"perplexity": 8.0})
    await _feedback(services.db, "served", vid, ["down"] * 5)
    await check_production(services.db, services.audit, Thresholds(min_feedback=5))
    gw_env = {k: v for k, v in env.items() if k not in ("data_dir", "tiny")} | {
        "PALISADE_MODELS_FILE": str(tiny_models_file)}
    gw = GatewayProcess(gw_env, tmp_path / "gw.log").start(ready=False)  # the admin API needs no model loaded
    try:
        engineer = login(gw, env, "ml_engineer")
        r = httpx.get(f"{gw.url}/admin/models/model-served/evaluations", headers=engineer, timeout=10)
        assert r.status_code == 200, r.text
        [version] = r.json()["versions"]
        assert version["id"] == vid and version["recorded"] == {"perplexity": 8.0}
        assert version["history"][-1]["feedback"]["down_rate"] == 1.0 and version["history"][-1]["drift"]
        assert httpx.get(f"{gw.url}/admin/models/nosuch/evaluations", headers=engineer, timeout=10).status_code == 404
        app = {"Authorization": f"Bearer {create_key(env, 'eval-app')}"}
        assert httpx.get(f"{gw.url}/admin/models/model-served/evaluations", headers=app, timeout=10).status_code == 403
    finally:
        gw.stop()

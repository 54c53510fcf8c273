"""The task's side of the runs table: claim with a lease, heartbeat, record events and metrics, finish.

The lease makes the job idempotent under Celery's at-least-once delivery: ``claim`` is one conditional UPDATE
(the run is queued or running, and nobody holds an unexpired lease), so of two copies of a task exactly one
wins; a worker that died stops renewing and its run is claimed by the redelivered task after ``lease_ttl``,
which resumes from the checkpoint.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update

from gateway.db.base import utcnow
from gateway.db.runs import TrainingRun, TrainingRunEvent

LEASE_TTL = timedelta(seconds=60)
#: events stored in the run's event log (step events too: the console draws the loss curve from them)
STORED = {"start", "resume", "step", "eval", "checkpoint", "end", "trial", "status"}


class RunStore:
    def __init__(self, db, owner: str, lease_ttl: timedelta = LEASE_TTL) -> None:
        self.db = db
        self.owner = owner
        self.lease_ttl = lease_ttl

    async def claim(self, run_id: str) -> TrainingRun | None:
        now = utcnow()
        async with self.db.session() as s:
            res = await s.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, TrainingRun.status.in_(("queued", "running")),
                       or_(TrainingRun.lease_owner.is_(None), TrainingRun.lease_until < now))
                .values(lease_owner=self.owner, lease_until=now + self.lease_ttl, heartbeat_at=now,
                        status="running", attempts=TrainingRun.attempts + 1,
                        started_at=func.coalesce(TrainingRun.started_at, now))
                .execution_options(synchronize_session=False))
            if res.rowcount != 1:
                return None
        async with self.db.session() as s:
            return await s.get(TrainingRun, run_id)

    async def get(self, run_id: str) -> TrainingRun | None:
        async with self.db.session() as s:
            return await s.get(TrainingRun, run_id)

    async def heartbeat(self, run_id: str) -> tuple[bool, bool]:
        """(still ours, cancel requested)."""
        now = utcnow()
        async with self.db.session() as s:
            res = await s.execute(update(TrainingRun)
                                  .where(TrainingRun.id == run_id, TrainingRun.lease_owner == self.owner)
                                  .values(lease_until=now + self.lease_ttl, heartbeat_at=now)
                                  .execution_options(synchronize_session=False))
            cancel = await s.scalar(select(TrainingRun.cancel_requested).where(TrainingRun.id == run_id))
        return res.rowcount == 1, bool(cancel)

    async def record(self, run_id: str, events: list[dict]) -> None:
        """Append events and fold them into the run's metrics (loss list in step order)."""
        if not events:
            return
        async with self.db.session() as s:
            run = await s.get(TrainingRun, run_id, with_for_update=True)
            m = dict(run.metrics or {})
            loss, lr, evals = list(m.get("loss", [])), list(m.get("lr", [])), list(m.get("eval", []))
            for e in events:
                kind = e.get("type")
                data = {k: v for k, v in e.items() if k not in ("type", "time")}
                if kind in STORED:
                    s.add(TrainingRunEvent(run_id=run_id, type=kind, data=data))
                if kind == "resume":  # the killed attempt may have logged steps past its checkpoint
                    loss, lr = loss[: e["step"]], lr[: e["step"]]
                    evals = [x for x in evals if x["step"] <= e["step"]]
                elif kind == "step":
                    loss = loss[: e["step"] - 1] + [e["loss"]]
                    lr = lr[: e["step"] - 1] + [e["lr"]]
                    m.update(step=e["step"], total_steps=e["total_steps"], tokens_per_s=e["tokens_per_s"],
                             eta_s=e["eta_s"], epoch=e["epoch"])
                elif kind == "eval":
                    evals.append({k: data.get(k) for k in ("step", "eval_loss", "perplexity")})
                elif kind == "start":
                    m["total_steps"] = e["total_steps"]
            m.update(loss=loss, lr=lr, eval=evals)
            run.metrics = m

    async def finish(self, run_id: str, status: str, **fields: Any) -> bool:
        """Final state, lease released; only by the lease holder (a stale worker cannot overwrite)."""
        async with self.db.session() as s:
            res = await s.execute(update(TrainingRun)
                                  .where(TrainingRun.id == run_id, TrainingRun.lease_owner == self.owner)
                                  .values(status=status, finished_at=utcnow(), lease_owner=None, lease_until=None,
                                          **fields)
                                  .execution_options(synchronize_session=False))
            return res.rowcount == 1


async def reap_expired(db, lease_ttl: timedelta = LEASE_TTL) -> list[tuple[str, str]]:
    """Release the lease of every ``running`` run whose holder stopped renewing it; ``[(run id, kind)]`` to
    re-enqueue (the beat task ``palisade.train.reap`` sends them), so a worker that died after acking its message
    is taken over without waiting for the broker to redeliver it.

    A live run is never touched: its lease is in the future. Each release is one conditional UPDATE (the lease
    still expired, the holder unchanged), so two reapers never both re-enqueue a run, and a stale holder that
    wakes up loses its next heartbeat and stops. A released run that no worker claimed within ``lease_ttl``
    (``lease_until`` doubles as the time it was released) is handed out again; a duplicate message is a no-op
    (``RunStore.claim``).
    """
    now = utcnow()
    reaped: list[tuple[str, str]] = []
    async with db.session() as s:
        rows = (await s.execute(
            select(TrainingRun.id, TrainingRun.kind, TrainingRun.lease_owner, TrainingRun.lease_until)
            .where(TrainingRun.status == "running",
                   or_(TrainingRun.lease_owner.is_not(None) & (TrainingRun.lease_until < now),
                       TrainingRun.lease_owner.is_(None) & (TrainingRun.lease_until < now - lease_ttl)))
        )).all()
    for run_id, kind, owner, until in rows:
        async with db.session() as s:
            holder = TrainingRun.lease_owner.is_(None) if owner is None else TrainingRun.lease_owner == owner
            res = await s.execute(update(TrainingRun)
                                  .where(TrainingRun.id == run_id, TrainingRun.status == "running", holder,
                                         TrainingRun.lease_until == until)
                                  .values(lease_owner=None, lease_until=now)
                                  .execution_options(synchronize_session=False))
            if res.rowcount == 1:
                reaped.append((run_id, kind))
    return reaped

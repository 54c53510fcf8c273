"""Hyperparameter sweeps: Optuna chooses each trial's settings; each trial is its own run and its own job.

The sweep (a parent run, approved once) asks Optuna for a trial, creates a child run with those settings
(approved under the sweep's approval: the search space was what the approver saw), enqueues it, and follows
its evaluation events: each ``eval`` is reported to Optuna, and a trial the pruner rejects is cancelled.
The best finished trial by the validation metric (lower eval loss by default) becomes the sweep's candidate.

Sweep spec (``--sweep FILE``, YAML or JSON)::

    trials: 4
    metric: eval_loss          # or any evaluation metric, with direction: maximize
    sampler: tpe               # tpe (seeded) or grid (categorical parameters only)
    pruner: median             # median or none
    parameters:
      learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      lora_rank: {type: categorical, choices: [4, 8, 16]}
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import optuna
from sqlalchemy import select

from gateway.audit.events import AuditEvent, Tag
from gateway.db.base import utcnow
from gateway.db.runs import FINAL, TrainingRun
from gateway.runs.service import TASK_RUN, request_digest
from trainer.evaluate.gates import lookup
from trainer.runs.store import RunStore


def suggest(trial: optuna.Trial, parameters: dict[str, dict]) -> dict[str, Any]:
    out = {}
    for name, space in parameters.items():
        kind = space.get("type", "float")
        if kind == "float":
            out[name] = trial.suggest_float(name, float(space["low"]), float(space["high"]),
                                            log=space.get("log", False))
        elif kind == "int":
            out[name] = trial.suggest_int(name, int(space["low"]), int(space["high"]), log=space.get("log", False))
        elif kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(space["choices"]))
        else:
            raise ValueError(f"parameter {name}: unknown type {kind!r}")
    return out


def make_study(spec: dict, seed: int) -> optuna.Study:
    direction = spec.get("direction", "minimize")
    pruner = optuna.pruners.NopPruner() if spec.get("pruner") == "none" else optuna.pruners.MedianPruner(
        n_startup_trials=1, n_warmup_steps=0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    if spec.get("sampler") == "grid":
        # every combination, enqueued in order (Optuna's GridSampler stops the study from inside tell(),
        # which only works under study.optimize, not the ask/tell loop that one-job-per-trial needs)
        names = list(spec["parameters"])
        for combo in itertools.product(*(spec["parameters"][n]["choices"] for n in names)):
            study.enqueue_trial(dict(zip(names, combo, strict=True)))
    return study


class SweepDriver:
    def __init__(self, *, db, audit, owner: str, enqueue: Callable[..., Any], poll_s: float = 1.0) -> None:
        self.db, self.audit, self.enqueue, self.poll_s = db, audit, enqueue, poll_s
        self.store = RunStore(db, owner)
        self.owner = owner

    async def run(self, sweep_id: str) -> dict[str, Any]:
        parent = await self.store.claim(sweep_id)
        if parent is None:
            return {"run": sweep_id, "skipped": True}
        try:
            return await self._drive(sweep_id, parent)
        except Exception as exc:  # never leave a sweep "running" behind a crashed driver
            await self.store.finish(sweep_id, "failed", error=f"{type(exc).__name__}: {exc}")
            await self._audit_finish(sweep_id, "failed", reason=str(exc)[:300])
            raise

    async def _drive(self, sweep_id: str, parent: TrainingRun) -> dict[str, Any]:
        spec = parent.sweep or {}
        metric = spec.get("metric", "eval_loss")
        study = make_study(spec, int(parent.config.get("seed", 1234)))
        await self.audit.record(AuditEvent(tag=Tag.RUN_START, actor=f"system:{self.owner}",
                                           target=f"run:{sweep_id}", details={"sweep": True}))
        finished: list[tuple[TrainingRun, float]] = []
        cancelled = False
        for number in range(int(spec.get("trials", 1))):
            ok, cancelled = await self.store.heartbeat(sweep_id)
            if not ok or cancelled:
                break
            trial = study.ask()
            params = suggest(trial, spec["parameters"])
            child = await self._create_trial(parent, number, params)
            await self.store.record(sweep_id, [{"type": "trial", "trial": number, "run": child.id,
                                                "params": params}])
            self.enqueue(TASK_RUN, child.id)
            done = await self._follow(sweep_id, child.id, trial)
            own = {k: v for k, v in (done.evaluation or {}).items() if k != "production"}  # not production's numbers
            value = lookup({**own, **_last_eval(done)}, metric)
            if done.status == "succeeded" and value is not None:
                study.tell(trial, value)
                finished.append((done, value))
            elif done.status == "cancelled" and not cancelled:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if not finished:
            status = "cancelled" if cancelled else "failed"
            await self.store.finish(sweep_id, status, error=None if cancelled else "no trial finished")
            await self._audit_finish(sweep_id, status)
            return {"run": sweep_id, "status": status}
        maximize = spec.get("direction") == "maximize"
        best, value = (max if maximize else min)(finished, key=lambda pair: pair[1])
        await self.store.finish(sweep_id, "succeeded", metrics={**(best.metrics or {}), "best_trial": best.id,
                                                                "best_value": value, "metric": metric},
                                evaluation=best.evaluation, gate_results=best.gate_results,
                                candidate={**(best.candidate or {}), "trial": best.id},
                                candidate_version=best.candidate_version, reproducibility=best.reproducibility)
        await self._audit_finish(sweep_id, "succeeded", best_trial=best.id, best_value=value)
        return {"run": sweep_id, "status": "succeeded", "best_trial": best.id}

    async def _audit_finish(self, sweep_id: str, status: str, **details: Any) -> None:
        await self.audit.record(AuditEvent(tag=Tag.RUN_FINISH, actor=f"system:{self.owner}",
                                           target=f"run:{sweep_id}", details={"status": status, **details}))

    async def _create_trial(self, parent: TrainingRun, number: int, params: dict) -> TrainingRun:
        config = {**parent.config, **params}
        digest = request_digest(parent.dataset_id, parent.method, parent.base, config, parent.gates, None)
        async with self.db.session() as s:
            existing = (await s.scalars(select(TrainingRun).where(TrainingRun.parent_id == parent.id,
                                                                  TrainingRun.trial_number == number))).first()
            if existing is not None:  # a taken-over sweep: the trial already exists
                return existing
            child = TrainingRun(kind="trial", parent_id=parent.id, trial_number=number, dataset_id=parent.dataset_id,
                                method=parent.method, base=parent.base, config=config, gates=parent.gates,
                                requester=parent.requester, request_digest=digest, status="queued",
                                approved_by=parent.approved_by, approved_at=utcnow(), approved_digest=digest)
            s.add(child)
            await s.flush()
            return child

    async def _follow(self, sweep_id: str, child_id: str, trial: optuna.Trial) -> TrainingRun:
        reported: set[int] = set()
        while True:
            ok, cancel = await self.store.heartbeat(sweep_id)
            async with self.db.session() as s:
                child = await s.get(TrainingRun, child_id)
                if child.status in FINAL:
                    return child
                for ev in (child.metrics or {}).get("eval", []):
                    if ev["step"] not in reported and ev.get("eval_loss") is not None:
                        reported.add(ev["step"])
                        trial.report(ev["eval_loss"], ev["step"])
                        if trial.should_prune():
                            child.cancel_requested = True
                if cancel or not ok:
                    child.cancel_requested = True
            await asyncio.sleep(self.poll_s)


def _last_eval(run: TrainingRun) -> dict:
    evals = (run.metrics or {}).get("eval") or []
    return evals[-1] if evals else {}

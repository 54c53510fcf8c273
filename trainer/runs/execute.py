"""One run, end to end, as the Celery task performs it (no torch here: the training process owns the device).

    claim the lease -> check the approval still matches the request -> materialise the dataset version into
    the run directory (first attempt only) -> launch the training process -> tail its events into the
    database, heartbeat the lease, pass on a cancel -> on exit: gates, candidate, final status, audit.

A second attempt (redelivered task after a worker died) finds the run directory with its checkpoint and the
same data, so the training process resumes mid-epoch.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.audit.events import AuditEvent, Tag
from gateway.errors import ApiError
from gateway.observability import tracing
from gateway.runs.service import row_digest
from trainer.evaluate import gates as gatelib
from trainer.runs.baseline import TARGET_KEY
from trainer.runs.candidate import candidate_info, register_candidate
from trainer.runs.data import SPLITS, DatasetSource, JsonlDatasetSource, write_jsonl_source
from trainer.runs.launcher import TrainingProcess, supervise
from trainer.runs.store import RunStore
from trainer.runs.worker import EXIT_CANCELLED, EXIT_OK

#: What every candidate is measured on (cheap on small models); classification/ROUGE only where data allows.
DEFAULT_EVALUATION = {"bias": True, "response_time": True, "rouge": True, "classification": True,
                      "max_examples": 8, "max_new_tokens": 16}


def open_local_dataset(data_dir: Path) -> Callable[[str], DatasetSource]:
    """Records exported by an operator as ``<data_dir>/datasets/<version id>/{train,validation,test}.jsonl``
    (the version must still be approved in the datasets tables: the run service checks it at request time)."""

    def open_(dataset_id: str) -> DatasetSource:
        root = Path(data_dir) / "datasets" / dataset_id
        if not dataset_id.isalnum() or not (root / "train.jsonl").exists():
            raise LookupError(f"dataset version {dataset_id} has no records here")
        return JsonlDatasetSource(root)

    return open_


def resolve_base(base: str | None, method: str) -> str | None:
    """Presets pass through; a directory is used as is. Registry versions: the lead wires the registry's
    artifact path here (``services.models``)."""
    if base is None or base.startswith("preset:"):
        return base
    if Path(base).is_dir():
        return str(Path(base).resolve())
    raise LookupError(f"base {base!r} is neither a preset nor a model directory")


def gate_metrics(result: dict) -> dict[str, Any]:
    return {"eval_loss": result.get("eval_loss"), "validation_loss": result.get("eval_loss"),
            "perplexity": result.get("perplexity"), "train_loss": (result.get("losses") or [None])[-1],
            **(result.get("evaluation") or {})}


class RunExecutor:
    def __init__(self, *, db, audit, owner: str, data_dir: Path, open_dataset: Callable[[str], DatasetSource],
                 registry=None, production_metrics: Callable[[Any], Any] = lambda run: None,
                 grace_s: float = 30.0, poll_s: float = 0.5, heartbeat_s: float = 2.0, gpus: int | None = None,
                 evaluation: dict | None = None, ctx: Any = None,
                 resolve_base: Callable[[str | None, str], Any] = resolve_base) -> None:
        self.db, self.audit, self.owner = db, audit, owner
        self.store = RunStore(db, owner)
        self.data_dir = Path(data_dir)
        self.open_dataset, self.registry, self.production_metrics = open_dataset, registry, production_metrics
        self.grace_s, self.poll_s, self.heartbeat_s, self.gpus = grace_s, poll_s, heartbeat_s, gpus
        self.evaluation = DEFAULT_EVALUATION if evaluation is None else evaluation
        self.ctx = ctx  # the registry's caller (a system context)
        self.resolve_base = resolve_base

    async def _audit(self, tag: str, run_id: str, **details: Any) -> None:
        await self.audit.record(AuditEvent(tag=tag, actor=f"system:{self.owner}", target=f"run:{run_id}",
                                           details=details))

    async def _prepare_dir(self, run) -> Path:
        run_dir = self.data_dir / "runs" / run.id
        if (run_dir / "request.json").exists():
            return run_dir  # a later attempt: same data, same request, resume from the checkpoint
        run_dir.mkdir(parents=True, exist_ok=True)
        source = self.open_dataset(run.dataset_id)
        if inspect.isawaitable(source):
            source = await source
        write_jsonl_source(run_dir / "data", {split: list(source.records(split)) for split in SPLITS})
        base = self.resolve_base(run.base, run.method)
        if inspect.isawaitable(base):
            base = await base
        config = {k: v for k, v in (run.config or {}).items() if k != TARGET_KEY}  # the alias is not a setting
        request = {"method": run.method, "base": base, "config": config,
                   "dataset_dir": str(run_dir / "data"), "evaluation": self.evaluation, "name": f"run {run.id}"}
        (run_dir / "request.json").write_text(json.dumps(request))
        return run_dir

    async def execute(self, run_id: str) -> dict[str, Any]:
        run = await self.store.claim(run_id)
        if run is None:  # duplicate delivery, someone else holds the lease, or already finished
            current = await self.store.get(run_id)
            return {"run": run_id, "skipped": True, "status": current.status if current else "missing"}
        if not run.approved_digest or row_digest(run) != run.approved_digest:
            await self.store.finish(run_id, "failed", error="the request does not match its approval")
            await self._audit(Tag.RUN_FINISH, run_id, status="failed", reason="approval digest mismatch")
            return {"run": run_id, "status": "failed"}
        await self._audit(Tag.RUN_START, run_id, attempt=run.attempts, owner=self.owner)
        try:
            return await self._train(run)
        except Exception as exc:  # never leave a run "running" behind a crashed task
            await self.store.finish(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            await self._audit(Tag.RUN_FINISH, run_id, status="failed", reason=str(exc)[:300])
            raise

    async def _train(self, run) -> dict[str, Any]:
        run_id = run.id
        phases = tracing.Phases("training", run=run_id, method=run.method)  # prepare -> train -> evaluate+register
        phases.enter("prepare")
        try:
            run_dir = await self._prepare_dir(run)
        except (LookupError, ValueError, OSError, ApiError) as exc:
            phases.close()
            await self.store.finish(run_id, "failed", error=str(exc))
            await self._audit(Tag.RUN_FINISH, run_id, status="failed", reason=str(exc))
            return {"run": run_id, "status": "failed"}
        if run.run_dir != str(run_dir):
            async with self.db.session() as s:
                (await s.get(type(run), run_id)).run_dir = str(run_dir)

        pending: list[dict] = []
        state = {"cancel": run.cancel_requested, "ours": True, "end": None}

        def on_event(event: dict) -> None:
            pending.append(event)
            if event.get("type") == "end":
                state["end"] = event

        async def flush() -> None:
            batch = pending[:]
            pending.clear()
            await self.store.record(run_id, batch)

        async def heartbeat() -> bool:
            await flush()
            state["ours"], state["cancel"] = await self.store.heartbeat(run_id)
            return state["ours"]

        phases.enter("train")
        process = TrainingProcess(run_dir, gpus=self.gpus)
        process.start()
        code = await supervise(process, on_event=on_event, heartbeat=heartbeat,
                               cancel_requested=lambda: state["cancel"], grace_s=self.grace_s, poll_s=self.poll_s,
                               heartbeat_s=self.heartbeat_s)
        await flush()
        if not state["ours"]:
            phases.close()
            return {"run": run_id, "skipped": True, "status": "lease lost"}
        phases.enter("evaluate")
        try:
            return await self._finish(run, run_dir, code, state)
        finally:
            phases.close()

    async def _finish(self, run, run_dir: Path, code: int, state: dict) -> dict[str, Any]:
        run_id = run.id
        if code == EXIT_OK and (run_dir / "result.json").exists():
            result = json.loads((run_dir / "result.json").read_text())
            metrics = gate_metrics(result)
            baseline = self.production_metrics(run)
            if inspect.isawaitable(baseline):
                baseline = await baseline
            # {"version", "model", "alias", "metrics"} from the registry, or a bare metrics mapping
            production = baseline.get("metrics") if baseline and "metrics" in baseline else baseline
            results = gatelib.check(run.gates or [], metrics, production)
            info = candidate_info(run, result, results)
            try:
                version = await register_candidate(self.registry, self.ctx, run, info, results)
            except ApiError as exc:  # e.g. an output kind the registry does not serve (an encoder): keep the run
                version, info["registration_error"] = None, str(exc)
            evaluation = {**metrics, "production": (baseline if baseline and "metrics" in baseline
                                                    else {"metrics": production}) if production else None}
            await self.store.finish(run_id, "succeeded", evaluation=evaluation, gate_results=results, candidate=info,
                                    candidate_version=version, reproducibility={**result["reproducibility"],
                                                                                "config": result["config"]})
            await self._audit(Tag.RUN_FINISH, run_id, status="succeeded", gates_passed=info["gates_passed"],
                              candidate_version=version, eval_loss=result.get("eval_loss"))
            return {"run": run_id, "status": "succeeded"}
        if code == EXIT_CANCELLED or (state["cancel"] and code < 0):
            await self.store.finish(run_id, "cancelled")
            await self._audit(Tag.RUN_FINISH, run_id, status="cancelled",
                              checkpoint=(run_dir / "checkpoint").exists())
            return {"run": run_id, "status": "cancelled"}
        error = (state["end"] or {}).get("error") or f"training process exited with {code}"
        await self.store.finish(run_id, "failed", error=error)
        await self._audit(Tag.RUN_FINISH, run_id, status="failed", reason=error)
        return {"run": run_id, "status": "failed"}

"""Rules of a training run: who may request, see, approve and cancel it, and what each state change records.

A run moves ``awaiting_approval -> queued -> running -> succeeded | failed | cancelled``. The approval is bound
to ``request_digest`` (sha256 of the canonical request: dataset, method, base, config, gates, sweep): the task
refuses to train a run whose request no longer matches the approved digest. Approvers are people, on a
session, with MFA in the last 5 minutes, and never the requester. Non-admins see only their own runs (others'
runs answer 404, not 403, so ids are not probeable). The job is enqueued by name after the commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from gateway.audit.events import AuditEvent, AuditTrail, Tag
from gateway.authn.stepup import ensure_fresh_mfa
from gateway.context import Principal, RequestContext
from gateway.db.base import utcnow
from gateway.db.runs import FINAL, TrainingRun, TrainingRunEvent
from gateway.errors import BadRequest, Conflict, Forbidden, NotFound

METHODS = ("sft-lora", "sft-full", "pretrain-clm", "pretrain-mlm", "contrastive", "seq2seq")
#: ``--set`` keys DESIGN.md names, type-checked here; the trainer validates every other key at start
TYPED_KEYS = {"max_steps": int, "epochs": float, "learning_rate": float, "batch_size": int, "seq_len": int,
              "lora_rank": int}
GATE_OPS = (">=", "<=", ">", "<")
TASK_RUN, TASK_SWEEP = "palisade.train.run", "palisade.train.sweep"


class Gate(msgspec.Struct, forbid_unknown_fields=True):
    """``metric op threshold`` (absolute) or, with ``relative``, ``metric op production * (1 + threshold)``
    for ratios / ``production + threshold`` for differences (``relative="ratio"|"delta"``)."""

    metric: str
    op: str
    threshold: float
    relative: str | None = None
    name: str | None = None


class RunCreate(msgspec.Struct, forbid_unknown_fields=True):
    dataset: str
    method: str
    base: str | None = None
    config: dict[str, Any] = {}
    gates: list[Gate] = []
    sweep: dict[str, Any] | None = None


class RunView(msgspec.Struct):
    id: str
    kind: str
    status: str
    dataset: str
    method: str
    base: str | None
    config: dict[str, Any]
    requester: str
    request_digest: str
    approved_by: str | None
    metrics: dict[str, Any]
    gates: list[dict[str, Any]]
    evaluation: dict[str, Any]
    candidate_version: str | None
    candidate: dict[str, Any]
    reproducibility: dict[str, Any]
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    parent_id: str | None = None
    trials: list[dict[str, Any]] = []


def request_digest(dataset: str, method: str, base: str | None, config: dict, gates: list, sweep: dict | None) -> str:
    canonical = json.dumps({"dataset": dataset, "method": method, "base": base, "config": config, "gates": gates,
                            "sweep": sweep}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def row_digest(run: TrainingRun) -> str:
    return request_digest(run.dataset_id, run.method, run.base, run.config, run.gates, run.sweep)


def validate_request(body: RunCreate) -> None:
    if body.method not in METHODS:
        raise BadRequest(f"method must be one of {', '.join(METHODS)}")
    if not body.dataset.strip():
        raise BadRequest("dataset is required")
    for key, value in body.config.items():
        if not isinstance(value, str | int | float | bool):
            raise BadRequest(f"config.{key} must be a number, string or boolean")
        typ = TYPED_KEYS.get(key)
        if typ is not None:
            try:
                number = typ(value)
            except (TypeError, ValueError):
                raise BadRequest(f"config.{key} must be {typ.__name__}") from None
            if number < 0 or (key != "max_steps" and number == 0):
                raise BadRequest(f"config.{key} must be positive")
    for gate in body.gates:
        if gate.op not in GATE_OPS or gate.relative not in (None, "ratio", "delta"):
            raise BadRequest(f"gate on {gate.metric}: op must be one of {GATE_OPS}, relative ratio|delta")
    if body.sweep is not None:
        params = body.sweep.get("parameters")
        if not isinstance(params, dict) or not params:
            raise BadRequest("sweep.parameters must map setting names to search spaces")
        trials = body.sweep.get("trials")
        if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 100:
            raise BadRequest("sweep.trials must be an integer between 1 and 100")
        for name, space in params.items():
            if name in ("seed",) or not isinstance(space, dict) or space.get("type", "float") not in (
                    "float", "int", "categorical"):
                raise BadRequest(f"sweep.parameters.{name}: a space {{type: float|int|categorical, ...}}")
            kind = space.get("type", "float")
            if (kind == "categorical" and not (isinstance(space.get("choices"), list) and space["choices"])) or (
                    kind != "categorical" and not all(isinstance(space.get(k), int | float) for k in ("low", "high"))):
                raise BadRequest(f"sweep.parameters.{name}: categorical needs choices, float/int need low and high")
            if body.sweep.get("sampler") == "grid" and kind != "categorical":
                raise BadRequest("a grid sweep takes categorical parameters only")


async def dataset_status(session, dataset_id: str) -> tuple[str | None, str | None]:
    """(status, content digest) of a dataset version from the datasets domain's table, or (None, None).

    Read with SQL by table name so the runs domain does not import the datasets models; a missing table
    (datasets not installed) reads as "no such dataset", which refuses the run.
    """
    try:
        async with session.begin_nested():
            row = (await session.execute(
                text("SELECT status, content_digest FROM dataset_versions WHERE id = :id AND deleted_at IS NULL"),
                {"id": dataset_id})).first()
    except DBAPIError:
        return None, None
    return (row[0], row[1]) if row else (None, None)


def is_admin(principal: Principal) -> bool:
    return principal.kind == "user" and "admin" in principal.roles


class RunService:
    def __init__(self, db, audit: AuditTrail, enqueue: Callable[..., Any]) -> None:
        self.db = db  # gateway.db.session.Database
        self.audit = audit
        self.enqueue = enqueue  # services.jobs.enqueue(task_name, *ids), called after the commit

    async def _record(self, ctx: RequestContext, tag: str, run_id: str, **details: Any) -> None:
        await self.audit.record(AuditEvent.of(ctx, tag, target=f"run:{run_id}", **details))

    async def _visible(self, session, ctx: RequestContext, run_id: str) -> TrainingRun:
        run = await session.get(TrainingRun, run_id)
        if run is None or not (is_admin(ctx.principal) or run.requester == ctx.principal.id
                               or "approver" in ctx.principal.roles):
            raise NotFound("no such run")
        return run

    # --- request ---------------------------------------------------------------------------------------
    async def create(self, ctx: RequestContext, body: RunCreate) -> RunView:
        validate_request(body)
        gates = [msgspec.to_builtins(g) for g in body.gates]
        async with self.db.session() as s:
            status, _digest = await dataset_status(s, body.dataset)
            if status is None:
                raise NotFound("no such dataset version")
            if status != "approved":
                raise Conflict(f"dataset version is {status}, not approved; it cannot be trained on")
            run = TrainingRun(kind="sweep" if body.sweep else "run", dataset_id=body.dataset, method=body.method,
                              base=body.base, config=dict(body.config), gates=gates, sweep=body.sweep,
                              requester=ctx.principal.id, status="awaiting_approval",
                              request_digest=request_digest(body.dataset, body.method, body.base,
                                                            dict(body.config), gates, body.sweep))
            s.add(run)
            await s.flush()
            view = self.view(run)
        await self._record(ctx, Tag.RUN_CREATE, view.id, method=body.method, dataset=body.dataset, base=body.base,
                           digest=view.request_digest, sweep=bool(body.sweep))
        return view

    # --- four-eyes approval ----------------------------------------------------------------------------
    async def approve(self, ctx: RequestContext, run_id: str, digest: str | None = None) -> RunView:
        p = ctx.principal
        if p.kind != "user" or p.auth_method != "session":
            raise Forbidden("approvals come from a person's console session", code="approval_needs_session")
        ensure_fresh_mfa(p)
        async with self.db.session() as s:
            run = await self._visible(s, ctx, run_id)
            if run.requester == p.id:
                raise Forbidden("the requester of a run cannot approve it", code="four_eyes")
            if run.status != "awaiting_approval":
                raise Conflict(f"run is {run.status}, not awaiting approval")
            current = row_digest(run)
            if current != run.request_digest or (digest is not None and digest != current):
                raise Conflict("the request changed since it was shown; review it again")
            run.status, run.approved_by, run.approved_at, run.approved_digest = "queued", p.id, utcnow(), current
            view = self.view(run)
        await self._record(ctx, Tag.RUN_APPROVE, run_id, digest=view.request_digest, requester=view.requester)
        self.enqueue(TASK_SWEEP if view.kind == "sweep" else TASK_RUN, run_id)
        return view

    # --- cancel ----------------------------------------------------------------------------------------
    async def cancel(self, ctx: RequestContext, run_id: str) -> RunView:
        async with self.db.session() as s:
            run = await self._visible(s, ctx, run_id)
            if run.status in FINAL:
                raise Conflict(f"run is already {run.status}")
            before = run.status
            run.cancel_requested = True
            if run.status in ("awaiting_approval", "queued"):
                run.status, run.finished_at = "cancelled", utcnow()
            # a running run (and a sweep's running trials) stops at its next step; the task records the end
            await s.execute(update(TrainingRun).where(TrainingRun.parent_id == run_id,
                                                      TrainingRun.status.not_in(FINAL))
                            .values(cancel_requested=True))
            view = self.view(run)
        await self._record(ctx, Tag.RUN_CANCEL, run_id, status_before=before, status=view.status)
        return view

    # --- reads -----------------------------------------------------------------------------------------
    async def get(self, ctx: RequestContext, run_id: str) -> RunView:
        async with self.db.session() as s:
            run = await self._visible(s, ctx, run_id)
            trials = []
            if run.kind == "sweep":
                rows = (await s.scalars(select(TrainingRun).where(TrainingRun.parent_id == run_id)
                                        .order_by(TrainingRun.trial_number))).all()
                trials = [{"id": t.id, "trial": t.trial_number, "status": t.status, "config": t.config,
                           "eval_loss": (t.metrics.get("eval") or [{}])[-1].get("eval_loss")} for t in rows]
            return self.view(run, trials)

    async def list(self, ctx: RequestContext) -> list[RunView]:
        async with self.db.session() as s:
            q = select(TrainingRun).where(TrainingRun.kind != "trial").order_by(TrainingRun.created_at.desc())
            if not (is_admin(ctx.principal) or "approver" in ctx.principal.roles):
                q = q.where(TrainingRun.requester == ctx.principal.id)
            return [self.view(r) for r in (await s.scalars(q.limit(500))).all()]

    async def events(self, ctx: RequestContext, run_id: str, after: int = 0) -> tuple[list[dict], str]:
        """Events after id ``after`` (for SSE) and the run's status."""
        async with self.db.session() as s:
            run = await self._visible(s, ctx, run_id)
            rows = (await s.scalars(select(TrainingRunEvent).where(TrainingRunEvent.run_id == run_id,
                                                                   TrainingRunEvent.id > after)
                                    .order_by(TrainingRunEvent.id).limit(1000))).all()
            return [{"id": e.id, "type": e.type, "at": e.at.isoformat(), **e.data} for e in rows], run.status

    @staticmethod
    def view(run: TrainingRun, trials: list[dict] | None = None) -> RunView:
        gates = run.gate_results or [{**g, "passed": None} for g in (run.gates or [])]
        iso = lambda d: d.isoformat() if d else None  # noqa: E731
        return RunView(id=run.id, kind=run.kind, status=run.status, dataset=run.dataset_id, method=run.method,
                       base=run.base, config=run.config or {}, requester=run.requester,
                       request_digest=run.request_digest, approved_by=run.approved_by,
                       metrics={"loss": [], **(run.metrics or {})}, gates=gates, evaluation=run.evaluation or {},
                       candidate_version=run.candidate_version, candidate=run.candidate or {},
                       reproducibility=run.reproducibility or {}, error=run.error,
                       created_at=iso(run.created_at) or "", started_at=iso(run.started_at),
                       finished_at=iso(run.finished_at), parent_id=run.parent_id, trials=trials or [])

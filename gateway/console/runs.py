"""Training runs: request a run, the list, one run with its live loss curve (the browser follows
``GET /admin/runs/{id}/events`` over SSE), gates and evaluation against production, approve (four eyes, step-up
inline) and cancel. Rules live in ``RunService``, called here exactly as the API calls it."""

from __future__ import annotations

from litestar import get, post
from litestar.response import Template

from gateway.authz.actions import Action
from gateway.console.access import UIDep, fragment
from gateway.console.stepup import ensure_step_up
from gateway.db.runs import FINAL
from gateway.errors import ApiError
from gateway.runs.service import METHODS, RunCreate, RunService

STEP_UP_NEEDED = "Approving needs a code from your authenticator (your last check is older than 5 minutes)."
NUMBERS = ("max_steps", "epochs", "learning_rate", "batch_size", "seq_len", "lora_rank")


def _runs(ui: UIDep) -> RunService:
    s = ui.services
    return RunService(s.db, s.audit, s.jobs.enqueue)


@get("/runs", opt={"action": Action.RUN_READ}, include_in_schema=False)
async def runs_page(ui: UIDep) -> Template:
    runs = await _runs(ui).list(ui.ctx)
    return await ui.page("runs.html", runs=runs, methods=METHODS, numbers=NUMBERS,
                         may_create=await ui.can(Action.RUN_CREATE))


@post("/runs", opt={"action": Action.RUN_CREATE}, include_in_schema=False, status_code=200)
async def run_create(ui: UIDep) -> Template:
    form = await ui.request.form()
    config: dict[str, float | int] = {}
    for key in NUMBERS:
        raw = str(form.get(key) or "").strip()[:20]
        if raw:
            try:
                config[key] = int(raw) if raw.isdigit() else float(raw)
            except ValueError:
                return fragment("notice.html", error=f"{key} must be a number", status_code=400)
    body = RunCreate(dataset=str(form.get("dataset") or "").strip()[:64], method=str(form.get("method") or "")[:32],
                     base=str(form.get("base") or "").strip()[:200] or None, config=config)
    try:
        run = await _runs(ui).create(ui.ctx, body)
    except ApiError as exc:
        return fragment("notice.html", error=exc.message, status_code=exc.status_code)
    return fragment("run_created.html", run=run)


@get("/runs/{run_id:str}", opt={"action": Action.RUN_READ}, include_in_schema=False)
async def run_page(ui: UIDep, run_id: str) -> Template:
    run = await _runs(ui).get(ui.ctx, run_id[:64])
    return await ui.page("run.html", run=run, final=run.status in FINAL,
                         may_approve=await ui.can(Action.RUN_APPROVE), may_cancel=await ui.can(Action.RUN_CANCEL))


@post("/runs/{run_id:str}/approve", opt={"action": Action.RUN_APPROVE}, include_in_schema=False, status_code=200)
async def run_approve(ui: UIDep, run_id: str) -> Template:
    form = await ui.request.form()
    if not await ensure_step_up(ui, form):
        return fragment("notice.html", error=STEP_UP_NEEDED, status_code=403)
    try:
        run = await _runs(ui).approve(ui.ctx, run_id[:64], str(form.get("digest") or "")[:64] or None)
    except ApiError as exc:
        return fragment("notice.html", error=exc.message, status_code=exc.status_code)
    return fragment("notice.html", done=f"Approved: the run is {run.status}. Reload to follow it.")


@post("/runs/{run_id:str}/cancel", opt={"action": Action.RUN_CANCEL}, include_in_schema=False, status_code=200)
async def run_cancel(ui: UIDep, run_id: str) -> Template:
    try:
        run = await _runs(ui).cancel(ui.ctx, run_id[:64])
    except ApiError as exc:
        return fragment("notice.html", error=exc.message, status_code=exc.status_code)
    return fragment("notice.html", done=f"The run is {run.status}.")


ROUTES = [runs_page, run_create, run_page, run_approve, run_cancel]

"""Datasets: upload (the browser streams the file to ``POST /admin/datasets``, which encrypts it as it arrives),
pipeline progress while it runs, the data card, a quarantine sample (audited), approve or reject (four eyes,
bound to the digest shown, step-up inline). Rules live in ``services.datasets``."""

from __future__ import annotations

from litestar import get, post
from litestar.response import Template

from gateway.authz.actions import Action
from gateway.console.access import UIDep, fragment
from gateway.console.stepup import ensure_step_up
from gateway.datasets.service import FORMATS, PII_METHODS, Decision
from gateway.errors import ApiError

STEP_UP_NEEDED = "A decision needs a code from your authenticator (your last check is older than 5 minutes)."
CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")


@get("/datasets", opt={"action": Action.DATASET_READ}, include_in_schema=False)
async def datasets_page(ui: UIDep) -> Template:
    rows = await ui.services.datasets.list(ui.ctx)
    return await ui.page("datasets.html", datasets=rows, formats=FORMATS, pii_methods=PII_METHODS,
                         classifications=CLASSIFICATIONS, may_create=await ui.can(Action.DATASET_CREATE))


@get("/datasets/{version_id:str}", opt={"action": Action.DATASET_READ}, include_in_schema=False)
async def dataset_page(ui: UIDep, version_id: str) -> Template:
    d = await ui.services.datasets.get(ui.ctx, version_id[:64])
    return await ui.page("dataset.html", d=d, may_approve=await ui.can(Action.DATASET_APPROVE),
                         may_reject=await ui.can(Action.DATASET_REJECT),
                         may_quarantine=await ui.can(Action.DATASET_QUARANTINE_READ))


@get("/datasets/{version_id:str}/progress", opt={"action": Action.DATASET_READ}, include_in_schema=False)
async def dataset_progress(ui: UIDep, version_id: str) -> Template:
    """The live part of the page; polled every 2 s while the pipeline runs, then it stops asking."""
    d = await ui.services.datasets.get(ui.ctx, version_id[:64])
    return fragment("dataset_progress.html", d=d)


@get("/datasets/{version_id:str}/quarantine", opt={"action": Action.DATASET_QUARANTINE_READ},
     include_in_schema=False)
async def dataset_quarantine(ui: UIDep, version_id: str) -> Template:
    try:
        sample = await ui.services.datasets.quarantine_sample(ui.ctx, version_id[:64])
    except ApiError as exc:
        return fragment("notice.html", error=exc.message, status_code=exc.status_code)
    return fragment("dataset_quarantine.html", sample=sample)


async def _decide(ui: UIDep, version_id: str, outcome: str) -> Template:
    form = await ui.request.form()
    if not await ensure_step_up(ui, form):
        return fragment("notice.html", error=STEP_UP_NEEDED, status_code=403)
    decision = Decision(reason=str(form.get("reason") or "")[:2000], digest=str(form.get("digest") or "")[:128]
                        or None, waive_bias=form.get("waive_bias") == "on")
    service = ui.services.datasets
    try:
        d = await (service.approve if outcome == "approve" else service.reject)(ui.ctx, version_id[:64], decision)
    except ApiError as exc:
        return fragment("notice.html", error=exc.message, status_code=exc.status_code)
    return fragment("notice.html", done=f"Dataset version {d.id} is now {d.status}.")


@post("/datasets/{version_id:str}/approve", opt={"action": Action.DATASET_APPROVE}, include_in_schema=False,
      status_code=200)
async def dataset_approve(ui: UIDep, version_id: str) -> Template:
    return await _decide(ui, version_id, "approve")


@post("/datasets/{version_id:str}/reject", opt={"action": Action.DATASET_REJECT}, include_in_schema=False,
      status_code=200)
async def dataset_reject(ui: UIDep, version_id: str) -> Template:
    return await _decide(ui, version_id, "reject")


ROUTES = [datasets_page, dataset_page, dataset_progress, dataset_quarantine, dataset_approve, dataset_reject]

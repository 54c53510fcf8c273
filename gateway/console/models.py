"""Models: registered models with their versions (status, gates, evaluation), aliases and what each serves,
canary share, promote, roll back, and the serving history.

Every change goes through ``services.models.registry`` exactly as ``/admin/aliases/*`` does: four eyes, a fresh
MFA check (asked inline here), gates, the artifact check, audit and the swap on every replica.
"""

from __future__ import annotations

from litestar import get, post
from litestar.response import Template

from gateway.authz.actions import Action
from gateway.console.access import UIDep, fragment
from gateway.console.stepup import ensure_step_up
from gateway.errors import ApiError
from gateway.models.service import CANARY

STEP_UP_NEEDED = "This needs a code from your authenticator (your last check is older than 5 minutes)."


@get("/models", opt={"action": Action.MODEL_READ}, include_in_schema=False)
async def models_page(ui: UIDep) -> Template:
    models = await ui.services.models.registry.list_models()
    return await ui.page("models.html", models=models)


@get("/models/{name:str}", opt={"action": Action.MODEL_READ}, include_in_schema=False)
async def model_page(ui: UIDep, name: str) -> Template:
    model = await ui.services.models.registry.show(name[:200])
    aliases = [a.alias for a in model.aliases if not a.alias.endswith(CANARY)] or [model.name]
    return await ui.page("model.html", model=model, aliases=aliases, may_promote=await ui.can(Action.MODEL_PROMOTE),
                         may_canary=await ui.can(Action.MODEL_CANARY),
                         may_rollback=await ui.can(Action.MODEL_ROLLBACK))


async def _change(ui: UIDep, what: str, call) -> Template:  # noqa: ANN001
    form = await ui.request.form()
    alias = str(form.get("alias") or "")[:128]
    if not await ensure_step_up(ui, form):
        return fragment("notice.html", error=STEP_UP_NEEDED, status_code=403)
    try:
        out = await call(alias, form)
    except ApiError as exc:
        return fragment("notice.html", error=exc.message, status_code=exc.status_code)
    return fragment("notice.html", done=f"{what}: {out.alias} now serves {out.version or 'nothing'} "
                    f"(generation {out.generation}); every replica swaps within seconds. Reload to see it.")


@post("/models/promote", opt={"action": Action.MODEL_PROMOTE}, include_in_schema=False, status_code=200)
async def promote(ui: UIDep) -> Template:
    registry = ui.services.models.registry
    return await _change(ui, "Promoted", lambda alias, form: registry.promote(
        ui.ctx, alias, str(form.get("version") or "")[:64]))


@post("/models/canary", opt={"action": Action.MODEL_CANARY}, include_in_schema=False, status_code=200)
async def canary(ui: UIDep) -> Template:
    registry = ui.services.models.registry

    def call(alias, form):  # noqa: ANN001, ANN202
        raw = str(form.get("percent") or "0").strip()
        try:
            percent = float(raw)
        except ValueError:
            percent = -1.0  # the registry refuses it with its own message
        version = str(form.get("version") or "")[:64] or None
        return registry.set_canary(ui.ctx, alias, version, percent=percent)

    return await _change(ui, "Canary set", call)


@post("/models/rollback", opt={"action": Action.MODEL_ROLLBACK}, include_in_schema=False, status_code=200)
async def rollback(ui: UIDep) -> Template:
    registry = ui.services.models.registry
    return await _change(ui, "Rolled back", lambda alias, form: registry.rollback(ui.ctx, alias))


ROUTES = [models_page, model_page, promote, canary, rollback]

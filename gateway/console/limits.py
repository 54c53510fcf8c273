"""Limits per principal, department and model, and current usage against them (the limiter's own read path,
which never charges), through the same ``LimitsAdmin`` the API and CLI use."""

from __future__ import annotations

from typing import Any

from litestar import get, post
from litestar.response import Template

from gateway.audit.events import Tag
from gateway.authn.principal import Principal
from gateway.authz.actions import Action
from gateway.console.access import UIDep, fragment
from gateway.errors import ApiError
from gateway.limits.config import FIELDS, LimitsAdmin

READ = {"action": Action.LIMIT_READ}
WRITE = {"action": Action.LIMIT_WRITE}
KINDS = ("principal", "department", "model")


@get("/limits", opt=READ, include_in_schema=False)
async def limits_page(ui: UIDep) -> Template:
    s = ui.services
    rules = await LimitsAdmin(s.db).list_rules()
    return await ui.page("limits.html", defaults=s.limits_config.defaults(), rules=rules, fields=FIELDS,
                      kinds=KINDS, suspended=s.limits_config.snapshot.suspended,
                      mode="memory" if s.redis is None else "redis",
                      may_write=await ui.can(Action.LIMIT_WRITE))


def _values(form: Any) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for f in (*FIELDS, "priority"):
        raw = str(form.get(f) or "").strip()
        if raw == "":
            out[f] = None
        elif raw.isdigit() and len(raw) <= 13:
            out[f] = int(raw)
        else:
            raise ValueError(f"{f} must be a whole number >= 0 (0 = unlimited) or empty (inherit)")
    return out


@post("/limits", opt=WRITE, include_in_schema=False, status_code=200)
async def limits_set(ui: UIDep) -> Template:
    form = await ui.request.form()
    kind = str(form.get("kind") or "")[:16]
    subject = str(form.get("subject") or "").strip()[:200]
    s = ui.services
    try:
        values = _values(form)
        await LimitsAdmin(s.db).set_rule(kind, subject, values, ui.principal.id)
    except ValueError as exc:
        return fragment("notice.html", error=str(exc), status_code=400)
    await ui.record(Tag.LIMITS_CHANGE, target=f"limits:{kind}:{subject}", set=values)
    await s.change_feed.publish("limits")
    return fragment("notice.html", done=f"Limits for {kind} {subject} saved; every replica applies them within "
                    "seconds. Reload to see the table.")


@post("/limits/{kind:str}/{subject:str}/delete", opt=WRITE, include_in_schema=False, status_code=200)
async def limits_delete(ui: UIDep, kind: str, subject: str) -> Template:
    s = ui.services
    if kind not in KINDS or not await LimitsAdmin(s.db).delete_rule(kind, subject[:200]):
        return fragment("row_note.html", note="no such rule", status_code=404)
    await ui.record(Tag.LIMITS_CHANGE, target=f"limits:{kind}:{subject[:200]}", deleted=True)
    await s.change_feed.publish("limits")
    return fragment("row_note.html", note="deleted")


@get("/limits/usage", opt=READ, include_in_schema=False)
async def limits_usage(ui: UIDep, principal: str = "", department: str = "", model: str = "") -> Template:
    """Usage of one principal id (``user:…``, ``key:…``, ``client:…``) as the limiter sees it now."""
    principal = principal.strip()[:200]
    if not principal:
        return fragment("limits_usage.html", error="Give a principal id, e.g. key:0123… or user:…", usage=None)
    who = await ui.services.identity.principal_for(principal)
    if who is None:  # not a live credential (revoked, disabled, unknown): the bare id still has buckets
        who = Principal(id=principal, kind="user" if principal.startswith("user:") else "app", name=principal,
                        auth_method="cli", attributes={"department": department[:200]} if department else {})
    try:
        usage = await ui.services.limiter.usage(who, model[:128] or None)
    except ApiError as exc:
        return fragment("limits_usage.html", error=exc.message, usage=None)
    return fragment("limits_usage.html", error=None, usage=usage)


ROUTES = [limits_page, limits_set, limits_delete, limits_usage]

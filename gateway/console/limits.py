"""Limits per principal, department and model, and current usage against them (the limiter's own read path,
which never charges), through the same ``LimitsAdmin`` the API and CLI use."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.response import Template

from gateway.audit.events import Tag
from gateway.authn.principal import Principal
from gateway.authz.actions import Action
from gateway.console.access import can, fragment, page, principal_of, record, services_of
from gateway.errors import ApiError
from gateway.limits.config import FIELDS, LimitsAdmin

READ = {"action": Action.LIMIT_READ}
WRITE = {"action": Action.LIMIT_WRITE}
KINDS = ("principal", "department", "model")


@get("/limits", opt=READ, include_in_schema=False)
async def limits_page(request: Request) -> Template:
    s = services_of(request)
    rules = await LimitsAdmin(s.db).list_rules()
    return await page(request, "limits.html", defaults=s.limits_config.defaults(), rules=rules, fields=FIELDS,
                      kinds=KINDS, suspended=s.limits_config.snapshot.suspended,
                      mode="memory" if s.redis is None else "redis",
                      may_write=await can(request, Action.LIMIT_WRITE))


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
async def limits_set(request: Request) -> Template:
    form = await request.form()
    kind = str(form.get("kind") or "")[:16]
    subject = str(form.get("subject") or "").strip()[:200]
    s = services_of(request)
    try:
        values = _values(form)
        await LimitsAdmin(s.db).set_rule(kind, subject, values, principal_of(request).id)
    except ValueError as exc:
        return fragment("notice.html", error=str(exc), status_code=400)
    await record(request, Tag.LIMITS_CHANGE, target=f"limits:{kind}:{subject}", set=values)
    await s.change_feed.publish("limits")
    return fragment("notice.html", done=f"Limits for {kind} {subject} saved; every replica applies them within "
                    "seconds. Reload to see the table.")


@post("/limits/{kind:str}/{subject:str}/delete", opt=WRITE, include_in_schema=False, status_code=200)
async def limits_delete(request: Request, kind: str, subject: str) -> Template:
    s = services_of(request)
    if kind not in KINDS or not await LimitsAdmin(s.db).delete_rule(kind, subject[:200]):
        return fragment("row_note.html", note="no such rule", status_code=404)
    await record(request, Tag.LIMITS_CHANGE, target=f"limits:{kind}:{subject[:200]}", deleted=True)
    await s.change_feed.publish("limits")
    return fragment("row_note.html", note="deleted")


@get("/limits/usage", opt=READ, include_in_schema=False)
async def limits_usage(request: Request, principal: str = "", department: str = "", model: str = "") -> Template:
    """Usage of one principal id (``user:…``, ``key:…``, ``client:…``) as the limiter sees it now."""
    principal = principal.strip()[:200]
    if not principal:
        return fragment("limits_usage.html", error="Give a principal id, e.g. key:0123… or user:…", usage=None)
    who = Principal(id=principal, kind="user" if principal.startswith("user:") else "app", name=principal,
                    auth_method="cli", attributes={"department": department[:200]} if department else {})
    try:
        usage = await services_of(request).limiter.usage(who, model[:128] or None)
    except ApiError as exc:
        return fragment("limits_usage.html", error=exc.message, usage=None)
    return fragment("limits_usage.html", error=None, usage=usage)


ROUTES = [limits_page, limits_set, limits_delete, limits_usage]

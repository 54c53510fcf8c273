"""Policies: the current ABAC policy, its versions with diffs, an editor that validates as you type, a "test a
request" panel that explains the decision against the text in the editor, apply (step-up) and roll back (step-up).

Every change goes through ``gateway.authz.admin`` exactly as the API and CLI do: validated, versioned, audited,
announced to every replica.
"""

from __future__ import annotations

from typing import Any

from litestar import get, post
from litestar.response import Template

from gateway.authz.actions import Action
from gateway.authz.admin import apply_policy, rollback_policy, test_policy
from gateway.authz.document import PolicyError, parse, unified_diff
from gateway.console.access import UIDep, fragment
from gateway.console.stepup import ensure_step_up
from gateway.errors import ApiError

READ = {"action": Action.POLICY_READ}
WRITE = {"action": Action.POLICY_WRITE}
MAX_TEXT = 2_000_000
STEP_UP_NEEDED = "Applying a policy needs a code from your authenticator (your last check is older than 5 minutes)."


def _text(form: Any) -> str:
    return str(form.get("text") or "")[:MAX_TEXT].replace("\r\n", "\n")


@get("/policies", opt=READ, include_in_schema=False)
async def policies_page(ui: UIDep) -> Template:
    store = ui.services.policy_store
    current = await store.current()
    history = await store.history(50)
    return await ui.page("policies.html", current=current, history=history, actions=[a.value for a in Action
                      if a is not Action.PUBLIC], may_write=await ui.can(Action.POLICY_WRITE))


@get("/policies/{version:int}", opt=READ, include_in_schema=False)
async def policy_version(ui: UIDep, version: int) -> Template:
    row = await ui.services.policy_store.get(version)
    return await ui.page("policy_version.html", row=row, diff_lines=row.diff.splitlines(),
                      may_write=await ui.can(Action.POLICY_WRITE))


@post("/policies/check", opt=READ, include_in_schema=False, status_code=200)
async def policy_check(ui: UIDep) -> Template:
    """Validate the editor's text and show its diff against the current version."""
    text = _text(await ui.request.form())
    current = await ui.services.policy_store.current()
    try:
        rules = parse(text)
    except PolicyError as exc:
        return fragment("policy_check.html", error=str(exc), diff_lines=[])
    diff = unified_diff(current.text if current else "", text, "current", "edited")
    return fragment("policy_check.html", error=None, rules=len(rules), diff_lines=diff.splitlines())


@post("/policies/test", opt=READ, include_in_schema=False, status_code=200)
async def policy_test(ui: UIDep) -> Template:
    """Explain one hypothetical request against the text in the editor (or the current policy)."""
    form = await ui.request.form()
    text = _text(form)
    if not text.strip():
        current = await ui.services.policy_store.current()
        text = current.text if current else ""
    principal = {
        "kind": str(form.get("kind") or "user")[:8],
        "roles": [r.strip()[:64] for r in str(form.get("roles") or "").replace(",", " ").split()][:10],
        "department": str(form.get("department") or "")[:200] or None,
        "clearance": str(form.get("clearance") or "")[:32] or None,
    }
    mfa_age = str(form.get("mfa_age_s") or "").strip()
    if mfa_age:
        principal["mfa_age_s"] = mfa_age if mfa_age.replace(".", "", 1).isdigit() else None
    resource = {k: str(form.get(k))[:200] for k in ("model", "classification", "owner") if form.get(k)}
    env = {"network": str(form.get("network") or "internal")[:16]}
    action = str(form.get("action") or "")[:200]
    try:
        if not action:
            raise ApiError("choose an action to test", status_code=400)
        result = test_policy(text, principal, action, resource, env)
    except ApiError as exc:
        return fragment("policy_explain.html", error=exc.message, result=None)
    return fragment("policy_explain.html", error=None, result=result, action=action)


@post("/policies/apply", opt=WRITE, include_in_schema=False, status_code=200)
async def policy_apply(ui: UIDep) -> Template:
    form = await ui.request.form()
    reason = str(form.get("reason") or "").strip()[:1000]
    if not reason:
        return fragment("policy_applied.html", error="Say why you are changing the policy.", status_code=400)
    if not await ensure_step_up(ui, form):
        return fragment("policy_applied.html", error=STEP_UP_NEEDED, status_code=403)
    s = ui.services
    try:
        row = await apply_policy(s.policy_store, s.audit.record, s.change_feed.publish, text=_text(form),
                                 actor=ui.principal.id, reason=reason,
                                 request_id=ui.ctx.request_id)
    except ApiError as exc:
        return fragment("policy_applied.html", error=exc.message, status_code=exc.status_code)
    return fragment("policy_applied.html", error=None, row=row)


@post("/policies/{version:int}/rollback", opt=WRITE, include_in_schema=False, status_code=200)
async def policy_rollback(ui: UIDep, version: int) -> Template:
    form = await ui.request.form()
    reason = str(form.get("reason") or "").strip()[:1000]
    if not reason:
        return fragment("policy_applied.html", error="Say why you are rolling back.", status_code=400)
    if not await ensure_step_up(ui, form):
        return fragment("policy_applied.html", error=STEP_UP_NEEDED, status_code=403)
    s = ui.services
    try:
        row = await rollback_policy(s.policy_store, s.audit.record, s.change_feed.publish, version=version,
                                    actor=ui.principal.id, reason=reason,
                                    request_id=ui.ctx.request_id)
    except ApiError as exc:
        return fragment("policy_applied.html", error=exc.message, status_code=exc.status_code)
    return fragment("policy_applied.html", error=None, row=row)


ROUTES = [policies_page, policy_version, policy_check, policy_test, policy_apply, policy_rollback]

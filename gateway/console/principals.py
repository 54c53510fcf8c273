"""Principals: people, apps (OAuth clients) and API keys, with the same actions and step-ups as ``/admin/*``.

A new secret (API key, client secret, a person's authenticator seed and recovery codes) is rendered once into
the answer of the create request and never stored or shown again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import segno
from litestar import get, post
from litestar.response import Template

from gateway.audit.events import Tag
from gateway.authn.passwords import WeakPassword
from gateway.authn.users import PERSON_ROLES
from gateway.authz.actions import Action
from gateway.console.access import UIDep, fragment
from gateway.console.paging import by_created
from gateway.console.stepup import ensure_step_up
from gateway.db.base import utcnow
from gateway.db.identity import OAuthClient, User
from gateway.db.keys import ApiKey

CLEARANCES = ("public", "internal", "confidential", "restricted")


def _text(form: Any, name: str, limit: int = 200) -> str:
    return str(form.get(name) or "").strip()[:limit]


def _aliases(form: Any) -> list[str]:
    return [a.strip()[:128] for a in _text(form, "models", 4000).replace(",", " ").split() if a.strip()][:100]


def _refused(template: str, message: str, status_code: int = 400, **context: Any) -> Template:
    return fragment(template, error=message, status_code=status_code, **context)


STEP_UP_NEEDED = "This needs a code from your authenticator (your last check is older than 5 minutes)."


# --- API keys ------------------------------------------------------------------------------------------------------
def key_state(row: ApiKey) -> str:
    if row.revoked_at:
        return "revoked"
    return "expired" if row.expires_at and row.expires_at <= utcnow() else "active"


@get("/keys", opt={"action": Action.KEY_READ}, include_in_schema=False)
async def keys_page(ui: UIDep, cursor: str | None = None) -> Template:
    result = await by_created(ui.services.db, ApiKey, cursor)
    return await ui.page("keys.html", page=result, key_state=key_state,
                      may_write=await ui.can(Action.KEY_WRITE))


@post("/keys", opt={"action": Action.KEY_WRITE}, include_in_schema=False, status_code=200)
async def key_create(ui: UIDep) -> Template:
    form = await ui.request.form()
    name = _text(form, "name")
    if not name:
        return _refused("key_created.html", "Give the key a name.")
    if not await ensure_step_up(ui, form):
        return _refused("key_created.html", STEP_UP_NEEDED, 403)
    days = _text(form, "expires_days", 6)
    if days and not (days.isdigit() and 1 <= int(days) <= 3650):
        return _refused("key_created.html", "Expiry must be 1 to 3650 days, or empty for none.")
    expires = utcnow() + timedelta(days=int(days)) if days else None
    models = _aliases(form)
    department = _text(form, "department")
    actor = ui.principal.id
    new = await ui.services.keys.create(
        name, models=models, owner_id=actor, expires_at=expires,
        attributes={"department": department} if department else {},
    )
    await ui.record(Tag.KEY_CREATE, target=f"key:{new.id}", name=name, prefix=new.prefix, models=models)
    return fragment("key_created.html", key=new.key, prefix=new.prefix, name=name, expires_at=expires)


@post("/keys/{key_id:str}/revoke", opt={"action": Action.KEY_WRITE}, include_in_schema=False, status_code=200)
async def key_revoke(ui: UIDep, key_id: str) -> Template:
    key_id = key_id[:64]
    if not await ui.services.keys.revoke(key_id):
        return fragment("row_note.html", note="No active key with that id.", status_code=404)
    await ui.record(Tag.KEY_REVOKE, target=key_id)
    return fragment("row_note.html", note="revoked")


# --- people --------------------------------------------------------------------------------------------------------
@get("/people", opt={"action": Action.USER_READ}, include_in_schema=False)
async def people_page(ui: UIDep, cursor: str | None = None) -> Template:
    result = await by_created(ui.services.db, User, cursor)
    return await ui.page("people.html", page=result, roles=sorted(PERSON_ROLES), clearances=CLEARANCES,
                      may_write=await ui.can(Action.USER_WRITE))


@post("/people", opt={"action": Action.USER_WRITE}, include_in_schema=False, status_code=200)
async def person_create(ui: UIDep) -> Template:
    form = await ui.request.form()
    username = _text(form, "username")
    roles = [str(r)[:64] for r in form.getall("roles", [])][:10]
    if not await ensure_step_up(ui, form):
        return _refused("person_created.html", STEP_UP_NEEDED, 403)
    attrs = {k: _text(form, k) for k in ("department", "clearance") if _text(form, k)}
    try:
        enrol = await ui.services.identity.users.create(
            username, str(form.get("password") or "")[:1024], roles=roles, attributes=attrs
        )
    except (WeakPassword, ValueError) as exc:
        return _refused("person_created.html", str(exc), 409 if "taken" in str(exc) else 400)
    await ui.record(Tag.USER_CREATE, target=f"user:{enrol.user_id}", roles=roles)
    await ui.record(Tag.MFA_ENROL, target=f"user:{enrol.user_id}", factor="totp")
    qr = segno.make(enrol.otpauth_uri, error="m").svg_data_uri(scale=4)
    return fragment("person_created.html", enrol=enrol, qr=qr)


async def _person_change(ui: UIDep, user_id: str, tag: str, change: Any) -> Template:
    user_id = user_id[:64]
    if not await change(user_id):
        return fragment("row_note.html", note="No such person.", status_code=404)
    await ui.record(tag, target=f"user:{user_id}")
    return fragment("row_note.html", note={"disable": "disabled", "enable": "enabled"}.get(
        tag.rsplit(":", 1)[1], "unlocked"))


@post("/people/{user_id:str}/disable", opt={"action": Action.USER_WRITE}, include_in_schema=False,
      status_code=200)
async def person_disable(ui: UIDep, user_id: str) -> Template:
    users = ui.services.identity.users
    return await _person_change(ui, user_id, Tag.USER_DISABLE, lambda u: users.set_disabled(u, True))


@post("/people/{user_id:str}/enable", opt={"action": Action.USER_WRITE}, include_in_schema=False,
      status_code=200)
async def person_enable(ui: UIDep, user_id: str) -> Template:
    users = ui.services.identity.users
    return await _person_change(ui, user_id, Tag.USER_ENABLE, lambda u: users.set_disabled(u, False))


@post("/people/{user_id:str}/unlock", opt={"action": Action.USER_WRITE}, include_in_schema=False,
      status_code=200)
async def person_unlock(ui: UIDep, user_id: str) -> Template:
    return await _person_change(ui, user_id, Tag.USER_UNLOCK, ui.services.identity.users.unlock)


# --- apps (OAuth clients) --------------------------------------------------------------------------------------------
@get("/apps", opt={"action": Action.CLIENT_READ}, include_in_schema=False)
async def apps_page(ui: UIDep, cursor: str | None = None) -> Template:
    result = await by_created(ui.services.db, OAuthClient, cursor)
    return await ui.page("apps.html", page=result, may_write=await ui.can(Action.CLIENT_WRITE))


@post("/apps", opt={"action": Action.CLIENT_WRITE}, include_in_schema=False, status_code=200)
async def app_create(ui: UIDep) -> Template:
    form = await ui.request.form()
    name = _text(form, "name")
    if not name:
        return _refused("app_created.html", "Give the app a name.")
    if not await ensure_step_up(ui, form):
        return _refused("app_created.html", STEP_UP_NEEDED, 403)
    actor = ui.principal.id
    attrs = {"owner": actor, **{k: _text(form, k) for k in ("department", "clearance") if _text(form, k)}}
    models = _aliases(form)
    try:
        new = await ui.services.identity.clients.create(name, models=models, attributes=attrs, scopes=[])
    except ValueError as exc:
        return _refused("app_created.html", str(exc))
    await ui.record(Tag.CLIENT_CREATE, target=new.client_id, name=name, models=models)
    return fragment("app_created.html", client_id=new.client_id, client_secret=new.client_secret, name=name)


@post("/apps/{client_id:str}/disable", opt={"action": Action.CLIENT_WRITE}, include_in_schema=False,
      status_code=200)
async def app_disable(ui: UIDep, client_id: str) -> Template:
    client_id = client_id[:64]
    if not await ui.services.identity.clients.disable(client_id):
        return fragment("row_note.html", note="No active app with that id.", status_code=404)
    await ui.record(Tag.CLIENT_DISABLE, target=client_id)
    return fragment("row_note.html", note="disabled")


ROUTES = [keys_page, key_create, key_revoke, people_page, person_create, person_disable, person_enable,
          person_unlock, apps_page, app_create, app_disable]

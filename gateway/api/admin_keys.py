"""Admin API for credentials: OAuth2 clients, API keys, people and token-signing keys.

Creating a credential (client, key, person) or rotating the signing keys needs a fresh MFA step-up; secrets are
in the creation response only. Bodies accept only the fields listed (no ``role``/``owner`` smuggling: BOPLA).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import Parameter
from sqlalchemy import select

from gateway.api.deps import ServicesDep
from gateway.api.guard import principal_of
from gateway.api.identity_api import NO_STORE, audit
from gateway.audit.events import Tag
from gateway.authn import totp
from gateway.authn.clients import client_view
from gateway.authn.passwords import WeakPassword
from gateway.authn.signing import rotate_signing_keys
from gateway.authn.stepup import require_fresh_mfa
from gateway.authn.users import user_view
from gateway.authz.actions import Action
from gateway.db.base import utcnow
from gateway.db.identity import SigningKey
from gateway.errors import BadRequest, Conflict, NotFound

TAGS = ["admin"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Alias = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Attr = Annotated[str, msgspec.Meta(max_length=200)]
Ident = Annotated[str, Parameter(max_length=64)]


class ClientCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    models: Annotated[list[Alias], msgspec.Meta(max_length=100)] = []
    scopes: Annotated[list[Alias], msgspec.Meta(max_length=50)] = []
    department: Attr | None = None
    classification_ceiling: Attr | None = None
    owner: Attr | None = None
    clearance: Attr | None = None


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    models: Annotated[list[Alias], msgspec.Meta(max_length=100)] = []
    expires_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None
    department: Attr | None = None


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    username: Name
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    roles: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(min_length=1, max_length=10)]
    department: Attr | None = None
    clearance: Attr | None = None


def _attrs(**kw: str | None) -> dict[str, str]:
    return {k: v for k, v in kw.items() if v is not None}


# --- OAuth2 clients ----------------------------------------------------------------------------------------------
@post(
    "/admin/clients",
    opt={"action": Action.CLIENT_WRITE},
    guards=[require_fresh_mfa],
    operation_id="createClient",
    tags=TAGS,
    status_code=201,
)
async def create_client(request: Request, services: ServicesDep, data: ClientCreate) -> Response[dict[str, Any]]:
    actor = principal_of(request).id
    attrs = _attrs(
        department=data.department,
        classification_ceiling=data.classification_ceiling,
        owner=data.owner or actor,
        clearance=data.clearance,
    )
    try:
        new = await services.identity.clients.create(
            data.name, models=data.models, attributes=attrs, scopes=data.scopes
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    await audit(
        services, request, Tag.CLIENT_CREATE, actor=actor, target=new.client_id, name=data.name, models=data.models
    )
    return Response(
        {"id": new.id, "client_id": new.client_id, "client_secret": new.client_secret},
        headers=NO_STORE,
        status_code=201,
    )


@get("/admin/clients", opt={"action": Action.CLIENT_READ}, operation_id="listClients", tags=TAGS)
async def list_clients(request: Request, services: ServicesDep) -> list[dict[str, Any]]:
    return [client_view(c) for c in await services.identity.clients.list()]


@post(
    "/admin/clients/{client_id:str}/disable",
    opt={"action": Action.CLIENT_WRITE},
    operation_id="disableClient",
    tags=TAGS,
    status_code=200,
)
async def disable_client(request: Request, services: ServicesDep, client_id: Ident) -> dict[str, Any]:
    if not await services.identity.clients.disable(client_id):
        raise NotFound("no active client with that id")
    await audit(services, request, Tag.CLIENT_DISABLE, actor=principal_of(request).id, target=client_id)
    return {"disabled": client_id}


@delete(
    "/admin/clients/{client_id:str}",
    opt={"action": Action.CLIENT_WRITE},
    operation_id="deleteClient",
    tags=TAGS,
    status_code=200,
)
async def delete_client(request: Request, services: ServicesDep, client_id: Ident) -> dict[str, Any]:
    if not await services.identity.clients.delete(client_id):
        raise NotFound("no client with that id")
    await audit(services, request, Tag.CLIENT_DELETE, actor=principal_of(request).id, target=client_id)
    return {"deleted": client_id}


# --- API keys -------------------------------------------------------------------------------------------------------
@post(
    "/admin/keys",
    opt={"action": Action.KEY_WRITE},
    guards=[require_fresh_mfa],
    operation_id="createKey",
    tags=TAGS,
    status_code=201,
)
async def create_key(request: Request, services: ServicesDep, data: KeyCreate) -> Response[dict[str, Any]]:
    services = services
    actor = principal_of(request).id
    expires = utcnow() + timedelta(days=data.expires_days) if data.expires_days else None
    new = await services.keys.create(
        data.name,
        models=data.models,
        owner_id=actor,
        expires_at=expires,
        attributes=_attrs(department=data.department),
    )
    await audit(
        services,
        request,
        Tag.KEY_CREATE,
        actor=actor,
        target=f"key:{new.id}",
        name=data.name,
        prefix=new.prefix,
        models=data.models,
    )
    return Response(
        {
            "id": new.id,
            "prefix": new.prefix,
            "key": new.key,
            "expires_at": expires.isoformat() if expires else None,
        },
        headers=NO_STORE,
        status_code=201,
    )


@get("/admin/keys", opt={"action": Action.KEY_READ}, operation_id="listKeys", tags=TAGS)
async def list_keys(request: Request, services: ServicesDep) -> list[dict[str, Any]]:
    now = utcnow()
    out = []
    for r in await services.keys.list():
        state = "revoked" if r.revoked_at else ("expired" if r.expires_at and r.expires_at <= now else "active")
        out.append(
            {
                "id": r.id,
                "prefix": r.prefix,
                "name": r.name,
                "models": r.models,
                "state": state,
                "owner_id": r.owner_id,
                "created_at": r.created_at.isoformat(),
                "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None,
            }
        )
    return out


@post(
    "/admin/keys/{key_id:str}/revoke",
    opt={"action": Action.KEY_WRITE},
    operation_id="revokeKey",
    tags=TAGS,
    status_code=200,
)
async def revoke_key(request: Request, services: ServicesDep, key_id: Ident) -> dict[str, Any]:
    if not await services.keys.revoke(key_id):
        raise NotFound("no active key with that id or prefix")
    await audit(services, request, Tag.KEY_REVOKE, actor=principal_of(request).id, target=key_id)
    return {"revoked": key_id}


# --- people -----------------------------------------------------------------------------------------------------------
@post(
    "/admin/users",
    opt={"action": Action.USER_WRITE},
    guards=[require_fresh_mfa],
    operation_id="createUser",
    tags=TAGS,
    status_code=201,
)
async def create_user(request: Request, services: ServicesDep, data: UserCreate) -> Response[dict[str, Any]]:
    ident = services.identity
    try:
        enrol = await ident.users.create(
            data.username,
            data.password,
            roles=data.roles,
            attributes=_attrs(department=data.department, clearance=data.clearance),
        )
    except WeakPassword as exc:
        raise BadRequest(str(exc), param="password") from None
    except ValueError as exc:
        if "taken" in str(exc):
            raise Conflict(str(exc)) from None
        raise BadRequest(str(exc)) from None
    await audit(
        services,
        request,
        Tag.USER_CREATE,
        actor=principal_of(request).id,
        target=f"user:{enrol.user_id}",
        roles=data.roles,
    )
    await audit(
        services, request, Tag.MFA_ENROL, actor=principal_of(request).id, target=f"user:{enrol.user_id}", factor="totp"
    )
    return Response(
        {
            "id": enrol.user_id,
            "username": enrol.username,
            "otpauth_uri": enrol.otpauth_uri,
            "qr_svg": totp.qr_svg(enrol.otpauth_uri),
            "recovery_codes": enrol.recovery_codes,
        },
        headers=NO_STORE,
        status_code=201,
    )


@get("/admin/users", opt={"action": Action.USER_READ}, operation_id="listUsers", tags=TAGS)
async def list_users(request: Request, services: ServicesDep) -> list[dict[str, Any]]:
    return [user_view(u) for u in await services.identity.users.list()]


async def _user_change(services: ServicesDep, request: Request, user_id: str, tag: str, change: Any) -> dict[str, Any]:
    if not await change(user_id):
        raise NotFound("no such user")
    await audit(services, request, tag, actor=principal_of(request).id, target=f"user:{user_id}")
    return {"user": user_id, "done": tag.rsplit(":", 1)[1]}


@post(
    "/admin/users/{user_id:str}/disable",
    opt={"action": Action.USER_WRITE},
    operation_id="disableUser",
    tags=TAGS,
    status_code=200,
)
async def disable_user(request: Request, services: ServicesDep, user_id: Ident) -> dict[str, Any]:
    users = services.identity.users
    return await _user_change(services, request, user_id, Tag.USER_DISABLE, lambda u: users.set_disabled(u, True))


@post(
    "/admin/users/{user_id:str}/enable",
    opt={"action": Action.USER_WRITE},
    operation_id="enableUser",
    tags=TAGS,
    status_code=200,
)
async def enable_user(request: Request, services: ServicesDep, user_id: Ident) -> dict[str, Any]:
    users = services.identity.users
    return await _user_change(services, request, user_id, Tag.USER_ENABLE, lambda u: users.set_disabled(u, False))


@post(
    "/admin/users/{user_id:str}/unlock",
    opt={"action": Action.USER_WRITE},
    operation_id="unlockUser",
    tags=TAGS,
    status_code=200,
)
async def unlock_user(request: Request, services: ServicesDep, user_id: Ident) -> dict[str, Any]:
    return await _user_change(services, request, user_id, Tag.USER_UNLOCK, services.identity.users.unlock)


# --- token-signing keys ---------------------------------------------------------------------------------------------
@get("/admin/signing-keys", opt={"action": Action.SIGNING_KEY_READ}, operation_id="listSigningKeys", tags=TAGS)
async def list_signing_keys(request: Request, services: ServicesDep) -> list[dict[str, Any]]:
    async with services.db.session() as s:
        rows = (await s.execute(select(SigningKey).order_by(SigningKey.created_at))).scalars().all()
    return [
        {
            "kid": r.kid,
            "alg": r.alg,
            "state": r.state,
            "created_at": r.created_at.isoformat(),
            "activated_at": r.activated_at.isoformat() if r.activated_at else None,
            "retired_at": r.retired_at.isoformat() if r.retired_at else None,
        }
        for r in rows
    ]


@post(
    "/admin/signing-keys/rotate",
    opt={"action": Action.SIGNING_KEY_WRITE},
    guards=[require_fresh_mfa],
    operation_id="rotateSigningKeys",
    tags=TAGS,
    status_code=200,
)
async def rotate_signing(request: Request, services: ServicesDep) -> dict[str, Any]:
    ident = services.identity
    states = await rotate_signing_keys(ident.db, ident.sealer)
    await ident.signing.load()
    await audit(
        services, request, Tag.SIGNING_KEY_ROTATE, actor=principal_of(request).id, target="signing-keys", **states
    )
    return states


ADMIN_IDENTITY_ROUTES = [
    create_client,
    list_clients,
    disable_client,
    delete_client,
    create_key,
    list_keys,
    revoke_key,
    create_user,
    list_users,
    disable_user,
    enable_user,
    unlock_user,
    list_signing_keys,
    rotate_signing,
]

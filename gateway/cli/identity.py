"""CLI for identity: ``palisade clients …``, ``palisade admin create``, ``palisade keys rotate-signing``."""

from __future__ import annotations

import json
from typing import Any

import click

from gateway.cli.common import cli_audit, run_db, settings_or_exit


@click.group("clients")
def clients() -> None:
    """OAuth2 clients (machine identities using the client-credentials grant)."""


@clients.command("create")
@click.option("--name", required=True, help="What the client is.")
@click.option(
    "--model", "models", multiple=True, help="Model alias the client may call (repeat; none = all allowed)."
)
@click.option("--department", default=None, help="ABAC attribute: department.")
@click.option("--classification-ceiling", default=None, help="ABAC attribute: highest data classification.")
@click.option("--owner", default=None, help="ABAC attribute: owning person or team.")
@click.option("--scope", "scopes", multiple=True, help="Scope the client may request (repeat).")
def clients_create(
    name: str,
    models: tuple[str, ...],
    department: str | None,
    classification_ceiling: str | None,
    owner: str | None,
    scopes: tuple[str, ...],
) -> None:
    """Register a client; prints {"client_id", "client_secret"} (shown once) alone on the last line."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.authn.clients import ClientService

    attrs = {
        k: v
        for k, v in {
            "department": department,
            "classification_ceiling": classification_ceiling,
            "owner": owner,
        }.items()
        if v
    }

    async def go(db: Any) -> Any:
        new = await ClientService(db).create(name, models=list(models), attributes=attrs, scopes=list(scopes))
        await cli_audit(
            db,
            AuditEvent(
                Tag.CLIENT_CREATE,
                actor="cli",
                target=new.client_id,
                details={"name": name, "models": list(models)},
            ),
        )
        return new

    try:
        new = run_db(go)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created client {new.client_id} ({name}); the secret is shown only once:", err=True)
    click.echo(json.dumps({"client_id": new.client_id, "client_secret": new.client_secret}))


@clients.command("list")
def clients_list() -> None:
    """List clients (never their secrets)."""
    from gateway.authn.clients import ClientService, client_view

    for row in run_db(lambda db: ClientService(db).list()):
        click.echo(json.dumps(client_view(row)))


@clients.command("disable")
@click.argument("client_id")
def clients_disable(client_id: str) -> None:
    """Disable a client: no new tokens, and its issued tokens are refused from the next request on."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.authn.clients import ClientService

    async def go(db: Any) -> bool:
        done = await ClientService(db).disable(client_id)
        if done:
            await cli_audit(db, AuditEvent(Tag.CLIENT_DISABLE, actor="cli", target=client_id))
        return done

    if not run_db(go):
        raise click.ClickException(f"no active client {client_id}")
    click.echo(f"disabled {client_id}")


@clients.command("delete")
@click.argument("client_id")
def clients_delete(client_id: str) -> None:
    """Delete a client for good; its issued tokens are refused from the next request on."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.authn.clients import ClientService

    async def go(db: Any) -> bool:
        done = await ClientService(db).delete(client_id)
        if done:
            await cli_audit(db, AuditEvent(Tag.CLIENT_DELETE, actor="cli", target=client_id))
        return done

    if not run_db(go):
        raise click.ClickException(f"no client {client_id}")
    click.echo(f"deleted {client_id}")


@click.group("admin")
def admin() -> None:
    """People with administrative roles."""


@admin.command("create")
@click.option("--username", required=True)
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted (hidden) when not given; reads stdin when piped.",
)
@click.option("--department", default=None)
@click.option(
    "--role",
    "roles",
    multiple=True,
    default=("admin",),
    show_default=True,
    help="Role (repeat): admin, ml_engineer, approver, compliance_officer, viewer.",
)
def admin_create(username: str, password: str, department: str | None, roles: tuple[str, ...]) -> None:
    """Create a person (the first admin); prints their TOTP enrolment (URI + QR code) and recovery codes once."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.authn import totp
    from gateway.authn.passwords import WeakPassword
    from gateway.authn.sealing import open_sealer
    from gateway.authn.users import UserService

    async def go(db: Any) -> Any:
        users = UserService(db, await open_sealer(settings_or_exit(), db))
        enrol = await users.create(
            username, password, roles=list(roles), attributes={"department": department} if department else {}
        )
        await cli_audit(
            db,
            AuditEvent(
                Tag.USER_CREATE, actor="cli", target=f"user:{enrol.user_id}", details={"roles": list(roles)}
            ),
        )
        await cli_audit(
            db,
            AuditEvent(
                Tag.MFA_ENROL, actor="cli", target=f"user:{enrol.user_id}", details={"factor": "totp"}
            ),
        )
        return enrol

    try:
        enrol = run_db(go)
    except (WeakPassword, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"created {username} ({', '.join(roles)}). Scan this into an authenticator app; it is shown once:"
    )
    click.echo(totp.qr_terminal(enrol.otpauth_uri))
    click.echo("recovery codes (each works once; keep them offline):")
    for code in enrol.recovery_codes:
        click.echo(f"  {code}")
    click.echo(enrol.otpauth_uri)


@click.command("rotate-signing")
def rotate_signing() -> None:
    """Rotate access-token signing keys one step: publish a new key, sign with the published one, retire the old."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.authn.sealing import open_sealer
    from gateway.authn.signing import rotate_signing_keys

    async def go(db: Any) -> Any:
        states = await rotate_signing_keys(db, await open_sealer(settings_or_exit(), db))
        await cli_audit(
            db, AuditEvent(Tag.SIGNING_KEY_ROTATE, actor="cli", target="signing-keys", details=states)
        )
        return states

    click.echo(json.dumps(run_db(go)))

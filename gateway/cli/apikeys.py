"""``palisade keys …``: API keys for apps (created, listed, revoked). The key is shown once, alone on the last line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from gateway.audit.events import AuditEvent, Tag
from gateway.authn.apikeys import ApiKeyService
from gateway.cli.common import CLI_ACTOR, cli_audit, run_db


@click.group()
def keys() -> None:
    """API keys for apps: create (shown once), list, revoke."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for.")
@click.option("--model", "models", multiple=True, help="Model alias the key may call (repeat; none = all allowed).")
@click.option("--expires-days", type=int, default=None, help="Expire after this many days.")
@click.option("--department", default=None, help="ABAC attribute: department.")
def keys_create(name: str, models: tuple[str, ...], expires_days: int | None, department: str | None) -> None:
    """Create an API key; the key is printed once, alone on the last line."""
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    attributes = {"department": department} if department else {}

    async def go(db: Any) -> Any:
        new = await ApiKeyService(db).create(name, models=list(models), expires_at=expires, attributes=attributes)
        await cli_audit(db, AuditEvent(Tag.KEY_CREATE, actor=CLI_ACTOR, target=f"key:{new.id}",
                                       details={"name": name, "prefix": new.prefix, "models": list(models)}))
        return new

    new = run_db(go)
    click.echo(f"created key {new.prefix} ({name}); it is shown only once:", err=True)
    click.echo(new.key)


@keys.command("list")
def keys_list() -> None:
    """List keys (prefixes only; keys are never stored)."""
    rows = run_db(lambda db: ApiKeyService(db).list())
    for r in rows:
        state = "revoked" if r.revoked_at else ("expired" if r.expires_at and r.expires_at < datetime.now(UTC)
                                                else "active")
        click.echo(json.dumps({"id": r.id, "prefix": r.prefix, "name": r.name, "models": r.models, "state": state,
                               "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None}))


@keys.command("revoke")
@click.argument("key_id_or_prefix")
def keys_revoke(key_id_or_prefix: str) -> None:
    """Revoke a key by id or prefix; effective on the next request."""

    async def go(db: Any) -> bool:
        done = await ApiKeyService(db).revoke(key_id_or_prefix)
        if done:
            await cli_audit(db, AuditEvent(Tag.KEY_REVOKE, actor=CLI_ACTOR, target=key_id_or_prefix))
        return done

    if not run_db(go):
        raise click.ClickException(f"no active key {key_id_or_prefix}")
    click.echo(f"revoked {key_id_or_prefix}")

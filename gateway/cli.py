"""The ``palisade`` command. Settings come from the same environment as the server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from gateway.settings import Settings, SettingsError, get_settings


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_db(fn: Any) -> Any:
    """Open the database (migrating the embedded SQLite file on first use) and call ``fn(db)``."""
    from gateway.db.migrate import upgrade
    from gateway.db.session import Database

    settings = _settings()
    if settings.is_sqlite:
        await asyncio.to_thread(upgrade, settings)
    db = Database(settings)
    try:
        return await fn(db)
    finally:
        await db.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Palisade: zero-trust inference gateway and governed training for a private LLM."""


@main.command()
@click.option("--host", default=None, help="Bind address (PALISADE_HOST).")
@click.option("--port", type=int, default=None, help="Port (PALISADE_PORT).")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Run the gateway (migrates the embedded SQLite database first)."""
    import uvicorn

    from gateway.db.migrate import upgrade
    from gateway.tls import uvicorn_tls_options

    # flags win over the environment, and the app (token issuer, metadata URLs) must see the same values
    if host:
        os.environ["PALISADE_HOST"] = host
    if port:
        os.environ["PALISADE_PORT"] = str(port)
    get_settings.cache_clear()
    settings = _settings()
    if settings.is_sqlite:
        upgrade(settings)

    kwargs: dict[str, Any] = uvicorn_tls_options(settings.tls_cert, settings.tls_key)  # TLS 1.2+, HSTS
    uvicorn.run(
        "gateway.app:create_app", factory=True, host=settings.host, port=settings.port,
        workers=workers, loop="uvloop", http="httptools", access_log=False, log_level="warning", log_config=None,
        timeout_graceful_shutdown=30, **kwargs,
    )


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the latest revision."""
    from gateway.db.migrate import upgrade

    settings = _settings()
    upgrade(settings)
    click.echo(f"database at head ({'sqlite' if settings.is_sqlite else 'postgresql'})")


@main.command()
@click.option("--queues", default="cpu", show_default=True, help="Comma-separated Celery queues.")
@click.option("--concurrency", type=int, default=1, show_default=True)
def worker(queues: str, concurrency: int) -> None:
    """Run a Celery worker for training jobs."""
    from trainer.celery_app import app

    app.worker_main(["worker", "--loglevel=INFO", f"--queues={queues}", f"--concurrency={concurrency}",
                     "--pool=prefork" if concurrency > 1 else "--pool=solo"])


@main.group()
def keys() -> None:
    """API keys for apps: create (shown once), list, revoke."""


@keys.command("create")
@click.option("--name", required=True, help="What the key is for.")
@click.option("--model", "models", multiple=True, help="Model alias the key may call (repeat; none = all allowed).")
@click.option("--expires-days", type=int, default=None, help="Expire after this many days.")
@click.option("--department", default=None, help="ABAC attribute: department.")
def keys_create(name: str, models: tuple[str, ...], expires_days: int | None, department: str | None) -> None:
    """Create an API key; the key is printed once, alone on the last line."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.authn.apikeys import ApiKeyService

    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    attributes = {"department": department} if department else {}

    async def go(db: Any) -> Any:
        new = await ApiKeyService(db).create(name, models=list(models), expires_at=expires, attributes=attributes)
        await _cli_audit(db, AuditEvent(Tag.KEY_CREATE, actor="cli", target=f"key:{new.id}",
                                        details={"name": name, "prefix": new.prefix, "models": list(models)}))
        return new

    new = _run(_with_db(go))
    click.echo(f"created key {new.prefix} ({name}); it is shown only once:", err=True)
    click.echo(new.key)


@keys.command("list")
def keys_list() -> None:
    """List keys (prefixes only; keys are never stored)."""
    from gateway.authn.apikeys import ApiKeyService

    rows = _run(_with_db(lambda db: ApiKeyService(db).list()))
    for r in rows:
        state = "revoked" if r.revoked_at else ("expired" if r.expires_at and r.expires_at < datetime.now(UTC)
                                                else "active")
        click.echo(json.dumps({"id": r.id, "prefix": r.prefix, "name": r.name, "models": r.models, "state": state,
                               "last_used_at": r.last_used_at.isoformat() if r.last_used_at else None}))


@keys.command("revoke")
@click.argument("key_id_or_prefix")
def keys_revoke(key_id_or_prefix: str) -> None:
    """Revoke a key by id or prefix; effective on the next request."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.authn.apikeys import ApiKeyService

    async def go(db: Any) -> bool:
        done = await ApiKeyService(db).revoke(key_id_or_prefix)
        if done:
            await _cli_audit(db, AuditEvent(Tag.KEY_REVOKE, actor="cli", target=key_id_or_prefix))
        return done

    if not _run(_with_db(go)):
        raise click.ClickException(f"no active key {key_id_or_prefix}")
    click.echo(f"revoked {key_id_or_prefix}")


async def _cli_audit(db: Any, event: Any) -> None:
    from gateway.audit.chain import record_once

    await record_once(_settings(), db, event)


@main.group()
def models() -> None:
    """Model aliases and their endpoints."""


@models.command("list")
def models_list() -> None:
    """Model aliases the models file (or the built-in default) defines."""
    from gateway.inference.factory import default_models, load_models_file

    settings = _settings()
    specs = load_models_file(settings.models_file) if settings.models_file else default_models(settings)
    for spec in specs:
        click.echo(json.dumps(spec, default=str))


from gateway.crypto.cli import rotate_command  # noqa: E402

keys.add_command(rotate_command)

from gateway.audit.cli import audit as audit_group  # noqa: E402

main.add_command(audit_group)

from gateway.tls import dev_cert  # noqa: E402

main.add_command(dev_cert)

from gateway.authz.cli import limits as limits_group  # noqa: E402
from gateway.authz.cli import policy as policy_group  # noqa: E402

main.add_command(policy_group)
main.add_command(limits_group)


from gateway.authn.cli import admin, clients, rotate_signing  # noqa: E402

main.add_command(clients)
main.add_command(admin)
keys.add_command(rotate_signing)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

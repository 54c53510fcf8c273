"""``palisade models …``: list, import (a candidate version), show. Thin: the registry holds the rules.

``palisade models import --name N (--path DIR | --gguf FILE) [--base VERSION]`` prints the new version id alone on
the last line of stdout. The importer is recorded as ``cli:<OS user>`` and can never approve the version.
Promotion, canary and rollback need a person with fresh MFA, so they are API/console actions, not CLI ones.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from typing import Any

import click

from gateway.models.views import to_json


def _settings() -> Any:
    from gateway.settings import SettingsError, get_settings

    try:
        return get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


async def _with_registry(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open the database (migrating the embedded SQLite file first), the audit chain and the registry."""
    from gateway.audit.chain import AuditChain
    from gateway.crypto import open_keyring
    from gateway.db.migrate import upgrade
    from gateway.db.session import Database
    from gateway.models.wiring import open_registry

    settings = _settings()
    if settings.is_sqlite:
        await asyncio.to_thread(upgrade, settings)
    db = Database(settings)
    chain = None
    try:
        chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
        return await fn(open_registry(settings, db, chain))
    finally:
        if chain is not None:
            await chain.close()
        await db.close()


def _run(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from gateway.errors import ApiError

    try:
        return asyncio.run(_with_registry(fn))
    except ApiError as exc:
        raise click.ClickException(exc.message) from None


class _Cli:
    """The registry context of a CLI call: no person, so it may import but never approve."""

    principal = None
    request_id = None
    system = False

    def __init__(self) -> None:
        self.actor = f"cli:{getpass.getuser()}"


@click.group("models")
def models() -> None:
    """Model registry: models, versions, aliases."""


@models.command("list")
def models_list() -> None:
    """Every model with its versions and the aliases serving them (one JSON object per line)."""
    for m in _run(lambda r: r.list_models()):
        click.echo(to_json(m))


@models.command("show")
@click.argument("name")
def models_show(name: str) -> None:
    """One model (or the model an alias serves): versions, aliases, and which version served each alias when."""
    click.echo(to_json(_run(lambda r: r.show(name))))


@models.command("import")
@click.option("--name", required=True, help="Model name (versions are numbered per model).")
@click.option("--path", "path", default=None, help="A transformers folder or a peft adapter folder.")
@click.option("--gguf", "gguf", default=None, help="A GGUF file.")
@click.option("--base", default=None, help="Base version id (required for a peft adapter).")
def models_import(name: str, path: str | None, gguf: str | None, base: str | None) -> None:
    """Register an existing model as a candidate version; prints the version id alone on the last line."""
    if (path is None) == (gguf is None):
        raise click.UsageError("give exactly one of --path DIR or --gguf FILE")
    ctx = _Cli()
    version = _run(lambda r: r.import_model(ctx, name, path=path, gguf=gguf, base=base))
    click.echo(f"imported {name} version {version.number} ({version.kind}, {len(version.files)} files, "
               f"sha256 {version.digest[:16]}…) as a candidate", err=True)
    click.echo(version.id)

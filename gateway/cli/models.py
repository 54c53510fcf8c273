"""``palisade models …``: list, import (a candidate version), show. Thin: the registry holds the rules.

``palisade models import --name N (--path DIR | --gguf FILE) [--base VERSION]`` prints the new version id alone on
the last line of stdout. The importer is recorded as ``cli`` and can never approve the version; promotion, canary
and rollback need a person with fresh MFA, so they are API/console actions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from gateway.audit.events import AuditEvent
from gateway.cli.common import cli_audit, run_db, settings_or_exit
from gateway.context import RequestContext
from gateway.db.session import Database
from gateway.errors import ApiError
from gateway.models.artifacts import load_trusted_keys
from gateway.models.catalog import import_roots, trusted_keys_dir
from gateway.models.service import Registry
from gateway.models.views import to_json

T = TypeVar("T")


class _CliTrail:
    """The registry's audit trail in a short-lived command: each event one durable append to the same chain."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, event: AuditEvent) -> None:
        await cli_audit(self.db, event)


def _with_registry(fn: Callable[[Registry], Awaitable[T]]) -> T:
    settings = settings_or_exit()

    async def go(db: Database) -> T:
        registry = Registry(db, _CliTrail(db), import_roots=import_roots(settings),
                            trusted_keys=load_trusted_keys(trusted_keys_dir(settings)))
        return await fn(registry)

    try:
        return run_db(go)
    except ApiError as exc:
        raise click.ClickException(exc.message) from None


@click.group()
def models() -> None:
    """Model registry: models, versions, aliases."""


@models.command("list")
def models_list() -> None:
    """Every model with its versions and the aliases serving them (one JSON object a line)."""
    for m in _with_registry(lambda r: r.list_models()):
        click.echo(to_json(m))


@models.command("show")
@click.argument("name")
def models_show(name: str) -> None:
    """One model (or the model an alias serves): versions, aliases, and which version served each alias when."""
    click.echo(to_json(_with_registry(lambda r: r.show(name))))


@models.command("import")
@click.option("--name", required=True, help="Model name (versions are numbered per model).")
@click.option("--path", "path", default=None, help="A transformers folder or a peft adapter folder.")
@click.option("--gguf", "gguf", default=None, help="A GGUF file.")
@click.option("--base", default=None, help="Base version id (required for a peft adapter).")
def models_import(name: str, path: str | None, gguf: str | None, base: str | None) -> None:
    """Register an existing model as a candidate version; prints the version id alone on the last line."""
    if (path is None) == (gguf is None):
        raise click.UsageError("give exactly one of --path DIR or --gguf FILE")
    ctx = RequestContext.cli()
    version: Any = _with_registry(lambda r: r.import_model(ctx, name, path=path, gguf=gguf, base=base))
    click.echo(f"imported {name} version {version.number} ({version.kind}, {len(version.files)} files, "
               f"sha256 {version.digest[:16]}...) as a candidate", err=True)
    click.echo(version.id)

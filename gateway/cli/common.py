"""What every ``palisade`` command shares: the settings (as a clean CLI error when malformed), one event loop per
command, the database (the embedded SQLite file is migrated on first use), the CLI's audit records, JSON output.

Commands of each domain live in their own module beside this one (``gateway/cli/<domain>.py``) and import only
from here and from the domains; ``gateway.cli.main`` puts them together.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from gateway.audit.events import AuditEvent
from gateway.db.session import Database
from gateway.settings import Settings, SettingsError, get_settings

T = TypeVar("T")

#: the audit actor of a command run on the host (its operator is whoever holds the shell and the data dir)
CLI_ACTOR = "cli"


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def with_db(fn: Callable[[Database], Awaitable[T]]) -> T:
    """Open the database (migrating the embedded SQLite file on first use) and call ``fn(db)``."""
    from gateway.db.migrate import upgrade

    settings = settings_or_exit()
    if settings.is_sqlite:
        await asyncio.to_thread(upgrade, settings)
    db = Database(settings)
    try:
        return await fn(db)
    finally:
        await db.close()


def run_db(fn: Callable[[Database], Awaitable[T]]) -> T:
    return run(with_db(fn))


async def cli_audit(db: Database, event: AuditEvent) -> None:
    """The CLI's way to record an event: one durable append to the same chain the gateways write."""
    from gateway.audit.chain import record_once

    await record_once(settings_or_exit(), db, event)


def emit_json(obj: Any) -> None:
    """One JSON object on the last line of stdout (the contract scripts rely on)."""
    click.echo(json.dumps(obj, default=str))

"""The ``palisade`` command: one group, each domain's commands from its own module.

A domain's module is imported only when one of its commands runs (``--help`` lists every command without importing
any): ``palisade keys create`` does not pay for the batch domain's or the server's imports.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

#: command name -> "module:attribute" of the click command
COMMANDS = {
    "serve": "gateway.cli.server:serve",
    "worker": "gateway.cli.server:worker",
    "migrate": "gateway.cli.server:migrate",
    "dev-cert": "gateway.cli.server:dev_cert",
    "keys": "gateway.cli.main:_keys",
    "clients": "gateway.cli.identity:clients",
    "admin": "gateway.cli.identity:admin",
    "policy": "gateway.cli.policy:policy",
    "limits": "gateway.cli.policy:limits",
    "audit": "gateway.cli.audit:audit",
    "models": "gateway.cli.models:models",
    "datasets": "gateway.cli.datasets:datasets",
    "runs": "gateway.cli.runs:runs",
    "batches": "gateway.cli.batches:batches",
    "feedback": "gateway.cli.batches:feedback",
    "backup": "gateway.cli.ops:backup_command",
    "restore": "gateway.cli.ops:restore_command",
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name when used (click's documented lazy-loading pattern)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            return _load(self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)


def _load(target: str) -> click.Command:
    module, _, attr = target.partition(":")
    found = getattr(importlib.import_module(module), attr)
    return found() if not isinstance(found, click.Command) else found


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Palisade: zero-trust inference gateway and governed training for a private LLM."""


@main.group("keyring", cls=LazyGroup, lazy={"rotate": "gateway.cli.keyring:rotate_command"})
def keyring() -> None:
    """The envelope-encryption keyring (data keys wrapped by the key-encryption key)."""


@main.group("signing-keys", cls=LazyGroup, lazy={"rotate": "gateway.cli.identity:rotate_signing"})
def signing_keys() -> None:
    """The ES256 keys that sign access tokens (published in JWKS)."""


@main.command("settings")
def settings_help() -> None:
    """Every PALISADE_* setting with its default and help, by group."""
    from gateway.settings import declared

    group = None
    for g, env, default, help_text in declared():
        if g != group:
            click.echo(f"\n[{g}]")
            group = g
        click.echo(f"  {env} (default {default!r})\n      {help_text}")


def _keys() -> click.Group:
    """``keys``, with the names from before the split kept, hidden, so scripts keep working: ``keys rotate`` and
    ``keys rotate-signing``."""
    from gateway.cli.apikeys import keys
    from gateway.cli.identity import rotate_signing
    from gateway.cli.keyring import rotate_command

    for name, command in (("rotate", rotate_command), ("rotate-signing", rotate_signing)):
        if name not in keys.commands:
            keys.add_command(click.Command(name, callback=command.callback, params=command.params,
                                           help=command.help, hidden=True))
    return keys


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

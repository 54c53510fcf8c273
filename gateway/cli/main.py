"""The ``palisade`` command: one group, each domain's commands from its own module."""

from __future__ import annotations

import sys

import click

from gateway.cli.apikeys import keys
from gateway.cli.audit import audit
from gateway.cli.batches import batches, feedback
from gateway.cli.datasets import datasets
from gateway.cli.identity import admin, clients, rotate_signing
from gateway.cli.keyring import rotate_command
from gateway.cli.models import models
from gateway.cli.ops import backup_command, restore_command
from gateway.cli.policy import limits, policy
from gateway.cli.runs import runs
from gateway.cli.server import dev_cert, migrate, serve, worker
from gateway.settings import declared


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Palisade: zero-trust inference gateway and governed training for a private LLM."""


@main.group("keyring")
def keyring() -> None:
    """The envelope-encryption keyring (data keys wrapped by the key-encryption key)."""


@main.group("signing-keys")
def signing_keys() -> None:
    """The ES256 keys that sign access tokens (published in JWKS)."""


@main.command("settings")
def settings_help() -> None:
    """Every PALISADE_* setting with its default and help, by group."""
    group = None
    for g, env, default, help_text in declared():
        if g != group:
            click.echo(f"\n[{g}]")
            group = g
        click.echo(f"  {env} (default {default!r})\n      {help_text}")


keyring.add_command(rotate_command, "rotate")
signing_keys.add_command(rotate_signing, "rotate")
# the names before the split (kept, hidden, so scripts keep working): `keys rotate`, `keys rotate-signing`
keys.add_command(click.Command("rotate", callback=rotate_command.callback, params=rotate_command.params,
                               help=rotate_command.help, hidden=True))
keys.add_command(click.Command("rotate-signing", callback=rotate_signing.callback, params=rotate_signing.params,
                               help=rotate_signing.help, hidden=True))

for command in (serve, worker, migrate, dev_cert, keys, clients, admin, policy, limits, audit, models, datasets,
                runs, batches, feedback, backup_command, restore_command):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

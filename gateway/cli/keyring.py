"""``palisade keys rotate``: new data-key versions and re-wrapping under a new KEK, while gateways keep serving."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from gateway.cli.common import cli_audit, settings_or_exit, with_db


@click.command("rotate")
@click.option(
    "--purpose",
    "purposes",
    multiple=True,
    help="Only this purpose gets a new data-key version (repeat; default: every purpose).",
)
@click.option(
    "--kek/--no-kek",
    "new_kek",
    default=True,
    show_default=True,
    help="Also make a new KEK version (master.key file) and re-wrap every data key under it.",
)
def rotate_command(purposes: tuple[str, ...], new_kek: bool) -> None:
    """Rotate the keyring: old ciphertexts stay readable, new ones use the new versions."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.crypto import KeyringError, open_keyring

    async def go(db: Any) -> Any:
        keyring = await open_keyring(settings_or_exit(), db)
        report = await keyring.rotate(list(purposes) or None, new_kek=new_kek)
        await cli_audit(
            db,
            AuditEvent(
                Tag.KEYRING_ROTATE,
                actor="cli",
                target="keyring",
                details={
                    "kek_id": report.kek_id,
                    "new_versions": report.new_versions,
                    "rewrapped": report.rewrapped,
                },
            ),
        )
        return report

    try:
        report = asyncio.run(with_db(go))
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        json.dumps(
            {"kek_id": report.kek_id, "new_versions": report.new_versions, "rewrapped": report.rewrapped}
        )
    )

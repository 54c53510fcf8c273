"""``palisade backup --out FILE`` and ``palisade restore FILE`` (thin: gateway.ops.service does the work)."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import emit_json, settings_or_exit
from gateway.context import RequestContext

_KEY_FILE = click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="File with the backup key (default PALISADE_BACKUP_KEY_FILE, else PALISADE_BACKUP_KEY).")


@click.command("backup")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write (encrypted; made via a temporary file).")
@click.option("--with-artifacts", is_flag=True, help="Also copy artifact and shard files (else only their manifest).")
@_KEY_FILE
def backup_command(out: Path, with_artifacts: bool, key_file: Path | None) -> None:
    """Encrypted, signed online backup of the database, audit anchors, keyring (wrapped) and configuration."""
    from gateway.ops.archive import BackupError
    from gateway.ops.database import DatabaseError
    from gateway.ops.service import backup

    try:
        result = backup(settings_or_exit(), out, ctx=RequestContext.cli(), with_artifacts=with_artifacts,
                        key_file=key_file)
    except (BackupError, DatabaseError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"backup written to {result.path} ({result.size} bytes, {result.members} members); "
               f"manifest signed by {result.signer}", err=True)
    emit_json(result.summary())


@click.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a database that already holds rows.")
@_KEY_FILE
def restore_command(archive: Path, force: bool, key_file: Path | None) -> None:
    """Verify ARCHIVE (signature, every digest, the KEK at hand) and restore it into an empty database.

    Stop every gateway and worker first. A damaged or tampered archive is refused and nothing changes."""
    from gateway.ops.archive import BackupError
    from gateway.ops.database import DatabaseError
    from gateway.ops.service import restore

    try:
        verified, result = restore(settings_or_exit(), archive, ctx=RequestContext.cli(), force=force,
                                   key_file=key_file)
    except (BackupError, DatabaseError) as exc:
        raise click.ClickException(f"restore refused: {exc}") from exc
    for note in result.notes:
        click.echo(note, err=True)
    click.echo(f"restored {result.database} database up to audit record {result.audit_last_seq} "
               f"(archive signed by {verified.signer}); run `palisade audit verify`", err=True)
    emit_json({**result.summary(), "manifest_sha256": verified.manifest_sha256})


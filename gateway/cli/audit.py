"""``palisade audit …``: verify the trail, export it with a signed manifest, check an export offline, print the
public key, sign a checkpoint now, prune by retention."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.cli.common import settings_or_exit, with_db

_err = Console(stderr=True)


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date/time") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
        disable=not _err.is_terminal,
    )


async def _with_chain(fn: Any) -> Any:
    from gateway.audit.chain import AuditChain
    from gateway.crypto import open_keyring

    async def go(db: Any) -> Any:
        settings = settings_or_exit()
        chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
        try:
            return await fn(chain)
        finally:
            await chain.close()

    return await with_db(go)


def _count(url: str, lo: int | None = None, hi: int | None = None) -> int:
    from sqlalchemy import create_engine, func, select

    from gateway.audit.verify import _sync_url
    from gateway.db.audit import AuditRecord

    engine = create_engine(_sync_url(url))
    query = select(func.count()).select_from(AuditRecord)
    if lo is not None:
        query = query.where(AuditRecord.seq >= lo)
    if hi is not None:
        query = query.where(AuditRecord.seq <= hi)
    try:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)
    finally:
        engine.dispose()


@click.group("audit")
def audit() -> None:
    """The tamper-evident audit trail: verify, export, verify-export, public-key, rotate-key, checkpoint, prune."""


@audit.command("verify")
@click.option("--from-seq", type=int, default=None, help="First record to check (default: the start).")
@click.option("--to-seq", type=int, default=None, help="Last record to check (default: the end).")
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Trust only these PEM public keys (default: the pinned keys file, never the database's key table).",
)
@click.option(
    "--in-flight-s",
    type=float,
    default=None,
    help="An accepted request without a completion is 'in flight' this long, then 'open' "
    "(default PALISADE_AUDIT_IN_FLIGHT_S).",
)
def verify_cmd(
    from_seq: int | None, to_seq: int | None, public_keys: tuple[str, ...], in_flight_s: float | None
) -> None:
    """Check the hash chain, the signed checkpoints and the external head. Exit 0 clean, 1 on any problem.
    Also lists open requests (accepted, no completion recorded): a finding, not a problem."""
    from gateway.audit.chain import head_file_of
    from gateway.audit.pins import keys_file_of
    from gateway.audit.verify import verify_trail
    from gateway.db.migrate import upgrade

    settings = settings_or_exit()
    if settings.is_sqlite:
        upgrade(settings)
    pems = [Path(p).read_text() for p in public_keys] or None
    started = time.perf_counter()
    with _progress() as bar:
        task = bar.add_task("verifying", total=_count(settings.database_url, from_seq, to_seq))
        report = verify_trail(
            settings.database_url,
            head_file=head_file_of(settings),
            keys_file=keys_file_of(settings),
            from_seq=from_seq,
            to_seq=to_seq,
            public_keys=pems,
            progress=lambda n: bar.advance(task, n),
            in_flight_s=settings.audit_in_flight_s if in_flight_s is None else in_flight_s,
        )
    elapsed = time.perf_counter() - started
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    for request in report.open_requests:
        click.echo(f"OPEN {request}")
    rate = report.records / elapsed if elapsed > 0 else 0.0
    summary = (
        f"{report.records} records ({report.first_seq}..{report.last_seq}), {report.checkpoints} valid "
        f"checkpoints, {len(report.problems)} problems [{', '.join(sorted(report.kinds())) or 'none'}] "
        f"in {elapsed:.2f}s ({rate:,.0f} records/s)"
    )
    if report.open_requests:
        summary += f"; {len(report.open_requests)} open requests ({report.in_flight} in flight)"
    click.echo(("FAILED: " if report.problems else "OK: ") + summary)
    sys.exit(1 if report.problems else 0)


@audit.command("export")
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output file."
)
@click.option("--since", default=None, help="Records at or after this UTC time (ISO 8601).")
@click.option("--until", default=None, help="Records before this UTC time (ISO 8601).")
@click.option("--actor", default=None, help="Only this actor (principal id).")
@click.option(
    "--action", default=None, help="Only this tag, e.g. inference:request:complete (trailing * = prefix)."
)
@click.option("--model", default=None, help="Only this model alias.")
@click.option("--decision", default=None, help="Only this decision (allow, deny, ...).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
def export_cmd(
    out: Path,
    since: str | None,
    until: str | None,
    actor: str | None,
    action: str | None,
    model: str | None,
    decision: str | None,
    fmt: str,
) -> None:
    """Stream matching records to FILE with a signed FILE.manifest.json; the export is itself audited."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.audit.export import ExportFilters, export, manifest_path

    filters = ExportFilters(_when(since), _when(until), actor, action, model, decision)

    async def go(chain: Any) -> dict[str, Any]:
        await chain.checkpoint()  # the manifest then carries a signature over the current head
        with _progress() as bar:
            task = bar.add_task("exporting", total=None)
            manifest = await asyncio.to_thread(
                export,
                chain.settings.database_url,
                out,
                chain.signer,
                filters,
                fmt,
                lambda n: bar.advance(task, n),
            )
        await chain.record(
            AuditEvent(
                Tag.AUDIT_EXPORT,
                actor="cli",
                target=str(out.name),
                details={
                    "filters": filters.describe(),
                    "format": fmt,
                    "count": manifest["count"],
                    "sha256": manifest["sha256"],
                    "range": manifest["range"],
                },
            )
        )
        return manifest

    manifest = asyncio.run(_with_chain(go))
    click.echo(
        f"exported {manifest['count']} records to {out} (sha256 {manifest['sha256']}); "
        f"manifest {manifest_path(out)}"
    )


@audit.command("verify-export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM from `palisade audit public-key` (offline; no database needed).",
)
def verify_export_cmd(file: Path, public_key: str | None) -> None:
    """Check an export and its manifest offline. Exit 0 when intact, 1 otherwise."""
    from gateway.audit.export import verify_export

    report = verify_export(file, Path(public_key).read_text() if public_key else None)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    click.echo(
        ("FAILED: " if report.problems else "OK: ") + f"{report.count} records, "
        f"{len(report.problems)} problems"
    )
    sys.exit(1 if report.problems else 0)


@audit.command("public-key")
def public_key_cmd() -> None:
    """Print the audit signing public key (PEM) for offline verification."""
    from gateway.audit.pins import keys_file_of, pinner
    from gateway.audit.signing import AuditSigner, public_pem
    from gateway.crypto import open_keyring

    async def go(db: Any) -> str:
        settings = settings_or_exit()
        signer = await AuditSigner.load_or_create(db, await open_keyring(settings, db), pinner(keys_file_of(settings)))
        return public_pem(signer.public)

    click.echo(asyncio.run(with_db(go)), nl=False)


@audit.command("rotate-key")
def rotate_key_cmd() -> None:
    """Make a new audit signing key (pinned first); gateways sign with it after their next start, and the old
    key stays pinned so its checkpoints still verify."""
    from gateway.audit.events import AuditEvent, Tag
    from gateway.audit.pins import keys_file_of, pinner
    from gateway.audit.signing import AuditSigner
    from gateway.crypto import open_keyring

    async def go(db: Any) -> str:
        settings = settings_or_exit()
        signer = await AuditSigner.create(db, await open_keyring(settings, db), pinner(keys_file_of(settings)))
        return signer.key_id

    key_id = asyncio.run(with_db(go))

    async def note(chain: Any) -> None:  # recorded (and checkpointed) under the new key
        await chain.record(AuditEvent(Tag.AUDIT_KEY_ROTATE, actor="cli", target=key_id))

    asyncio.run(_with_chain(note))
    click.echo(key_id)


@audit.command("content")
@click.argument("seq", type=int)
def content_cmd(seq: int) -> None:
    """Decrypt the prompt and completion kept in record SEQ (models with `retain_content: true`); the reading is
    itself an audit event."""
    import json

    from sqlalchemy import select

    from gateway.audit.events import AuditEvent, Tag
    from gateway.db.audit import AuditRecord

    async def go(chain: Any) -> dict[str, Any]:
        async with chain.db.session() as s:
            row = (await s.execute(select(AuditRecord).where(AuditRecord.seq == seq))).scalar_one_or_none()
        if row is None:
            raise click.ClickException(f"no audit record {seq}")
        sealed = json.loads(row.details).get("content_enc")
        if not sealed:
            raise click.ClickException(f"record {seq} holds no content (its model does not retain content)")
        plain = await chain.keyring.adecrypt(bytes.fromhex(sealed), table="audit_records", row=row.request_id or "",
                                             field="content", purpose="prompts")
        await chain.record(AuditEvent(Tag.AUDIT_CONTENT_READ, actor="cli", target=f"seq:{seq}"))
        return json.loads(plain)

    click.echo(json.dumps(asyncio.run(_with_chain(go)), ensure_ascii=False, indent=2))


@audit.command("checkpoint")
def checkpoint_cmd() -> None:
    """Sign a checkpoint over the current head now (also written to the external head file)."""
    import json

    async def go(chain: Any) -> dict[str, Any]:
        return await chain.checkpoint()

    click.echo(json.dumps(asyncio.run(_with_chain(go))))


@audit.command("prune")
@click.option(
    "--days", type=int, default=None, help="Keep this many days (default PALISADE_AUDIT_RETENTION_DAYS)."
)
@click.option("--before", default=None, help="Prune records before this UTC time instead.")
def prune_cmd(days: int | None, before: str | None) -> None:
    """Delete old records; a signed anchor keeps the rest verifiable. Run with the table owner's database URL."""
    import json

    from gateway.audit.retention import prune

    cutoff = _when(before)
    if cutoff is None:
        days = days if days is not None else settings_or_exit().audit_retention_days
        if not days:
            raise click.ClickException(
                "no retention configured: give --days, --before or PALISADE_AUDIT_RETENTION_DAYS"
            )
        cutoff = datetime.now(UTC) - timedelta(days=days)

    async def go(chain: Any) -> Any:
        return await prune(chain, cutoff)

    result = asyncio.run(_with_chain(go))
    click.echo(json.dumps(result) if result else "nothing to prune")

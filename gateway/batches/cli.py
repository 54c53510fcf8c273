"""``palisade feedback …`` and ``palisade batches …``: the local operator's commands (audited as actor ``cli``).

``palisade feedback export --out FILE`` writes chosen feedback as a dataset file (JSON Lines: ``{"messages"}`` for
chat requests, ``{"prompt", "completion"}`` for completions; a correction replaces the model's answer), ready
for ``palisade datasets create --file FILE``. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from gateway.settings import SettingsError, get_settings


@contextlib.asynccontextmanager
async def _opened() -> AsyncIterator[Any]:
    """Database (the embedded SQLite file migrated first), keyring and audit trail of this deployment."""
    from types import SimpleNamespace

    from gateway.audit.chain import AuditChain
    from gateway.crypto import open_keyring
    from gateway.db.migrate import upgrade
    from gateway.db.session import Database

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    if settings.is_sqlite:
        await asyncio.to_thread(upgrade, settings)
    db = Database(settings)
    try:
        keyring = await open_keyring(settings, db)
        for purpose in ("batches", "feedback"):
            await keyring.ensure(purpose)
        audit = await AuditChain.open(settings, db, keyring)
        try:
            yield SimpleNamespace(settings=settings, db=db, keyring=keyring, audit=audit)
        finally:
            await audit.close()
    finally:
        await db.close()


@click.group()
def feedback() -> None:
    """Feedback on answers: rates per model version, export as a dataset."""


@feedback.command("export")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL file to write (created with mode 0600).")
@click.option("--min-rating", type=click.IntRange(1, 5), default=None, help="Only ratings >= N (thumbs up = 5).")
@click.option("--max-rating", type=click.IntRange(1, 5), default=None, help="Only ratings <= N (thumbs down = 1).")
@click.option("--corrections-only", is_flag=True, help="Only feedback that carries a corrected answer.")
@click.option("--model", default=None, help="Only this model alias.")
def export(out: Path, min_rating: int | None, max_rating: int | None, corrections_only: bool,
           model: str | None) -> None:
    """Write selected feedback (with its retained prompt) as a dataset file."""
    from gateway.batches.feedback import FeedbackService, to_jsonl

    async def go() -> int:
        async with _opened() as o:
            service = FeedbackService(db=o.db, keyring=o.keyring, access=None, audit=o.audit)  # type: ignore[arg-type]
            records = await service.export(actor="cli", min_rating=min_rating, max_rating=max_rating,
                                           corrections_only=corrections_only, model=model)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # retained prompts: owner-only
        with os.fdopen(fd, "wb") as fh:
            for chunk in to_jsonl(records):
                fh.write(chunk)
        return len(records)

    n = asyncio.run(go())
    click.echo(json.dumps({"out": str(out), "records": n}))


@feedback.command("rates")
@click.option("--model", default=None, help="Only this model alias.")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True)
@click.option("--bucket", type=click.Choice(["day", "hour"]), default="day", show_default=True)
def rates(model: str | None, days: int, bucket: str) -> None:
    """Mean score and counts per model version and period, as JSON."""
    from datetime import timedelta

    from gateway.batches.feedback import FeedbackService
    from gateway.db.base import utcnow

    async def go() -> list[dict[str, Any]]:
        async with _opened() as o:
            service = FeedbackService(db=o.db, keyring=o.keyring, access=None, audit=o.audit)  # type: ignore[arg-type]
            return await service.rates(since=utcnow() - timedelta(days=days), model=model, bucket=bucket)

    click.echo(json.dumps({"object": "list", "data": asyncio.run(go())}))


@click.group()
def batches() -> None:
    """Files and batches (OpenAI Batch API): retention sweep."""


@batches.command("sweep")
def sweep() -> None:
    """Delete files past PALISADE_FILES_RETENTION_DAYS (each deletion audited)."""
    from gateway.authz.decision import Decision
    from gateway.batches.service import Access, FileService
    from gateway.batches.storage import FileStore

    class _Operator:
        async def decide(self, *_: Any) -> Decision:
            return Decision(True, rule="cli")

    async def go() -> int:
        async with _opened() as o:
            store = FileStore(o.settings.data_dir / "files", o.keyring)
            files = FileService(db=o.db, store=store, access=Access(_Operator(), o.audit), audit=o.audit,
                                settings=o.settings)
            return await files.sweep()

    click.echo(json.dumps({"deleted": asyncio.run(go())}))

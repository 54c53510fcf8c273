"""``palisade feedback …`` and ``palisade batches …``: the local operator's commands (audited as actor ``cli``).

``palisade feedback export --out FILE`` writes chosen feedback as a dataset file (JSON Lines: ``{"messages"}`` for
chat requests, ``{"prompt", "completion"}`` for completions; a correction replaces the model's answer), ready
for ``palisade datasets create --file FILE``. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from gateway.batches.feedback import to_jsonl
from gateway.batches.wiring import BatchDomain
from gateway.cli.common import emit_json, run, settings_or_exit
from gateway.db.base import utcnow
from gateway.runtime import open_services


async def _with_domain(fn: Any) -> Any:
    """The deployment's services (the embedded SQLite file migrated first) and the batch domain on them."""
    from gateway.db.migrate import upgrade

    settings = settings_or_exit()
    if settings.is_sqlite:
        await asyncio.to_thread(upgrade, settings)
    async with open_services(settings) as services:
        return await fn(await BatchDomain.open(services))


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
@click.option("--dataset", "dataset_name", default=None,
              help="Also register the file as a new version of this dataset (the datasets pipeline and approval, "
                   "as `palisade datasets create --file FILE --format auto`).")
@click.option("--classification", type=click.Choice(["public", "internal", "confidential", "restricted"]),
              default="internal", show_default=True, help="With --dataset: the dataset's classification.")
def export(out: Path, min_rating: int | None, max_rating: int | None, corrections_only: bool,
           model: str | None, dataset_name: str | None, classification: str) -> None:
    """Write selected feedback (with its retained prompt) as a dataset file; prints
    {"out", "records"[, "dataset_version"]} on the last line."""

    async def go(domain: BatchDomain) -> dict[str, Any]:
        records = await domain.feedback.export(actor="cli", min_rating=min_rating, max_rating=max_rating,
                                               corrections_only=corrections_only, model=model)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # retained prompts: owner-only
        with os.fdopen(fd, "wb") as fh:
            for chunk in to_jsonl(records):
                fh.write(chunk)
        result: dict[str, Any] = {"out": str(out), "records": len(records)}
        if dataset_name and records:
            result["dataset_version"] = await _register_dataset(domain, out, dataset_name, classification)
        return result

    emit_json(run(_with_domain(go)))


async def _register_dataset(domain: BatchDomain, path: Path, name: str, classification: str) -> str:
    """The exported file into the datasets pipeline (PII removal, filters, approval) as the local operator."""
    from gateway.context import RequestContext
    from gateway.datasets.service import DatasetCreate, DatasetService

    s = domain.services
    service = DatasetService(s.settings, s.db, s.keyring, s.audit, s.jobs)
    req = DatasetCreate(name=name, format="auto", classification=classification, source="palisade feedback export",
                        purpose="improve the model from user feedback (corrections and ratings)")
    req.validate()
    upload_id, writer = service.new_upload()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                writer.write(chunk)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    view = await service.register(RequestContext.cli(), req, input_ref=f"upload:{upload_id}:{path.name}",
                                  source_name=path.name)
    return str(view.id)


@feedback.command("rates")
@click.option("--model", default=None, help="Only this model alias.")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True)
@click.option("--bucket", type=click.Choice(["day", "hour"]), default="day", show_default=True)
def rates(model: str | None, days: int, bucket: str) -> None:
    """Mean score and counts per model version and period, as JSON."""

    async def go(domain: BatchDomain) -> list[dict[str, Any]]:
        return await domain.feedback.rates(since=utcnow() - timedelta(days=days), model=model, bucket=bucket)

    emit_json({"object": "list", "data": run(_with_domain(go))})


@click.group()
def batches() -> None:
    """Files and batches (OpenAI Batch API): retention sweep."""


@batches.command("sweep")
def sweep() -> None:
    """Delete files past PALISADE_FILES_RETENTION_DAYS (each deletion audited)."""

    async def go(domain: BatchDomain) -> int:
        return await domain.files.sweep()

    emit_json({"deleted": run(_with_domain(go))})

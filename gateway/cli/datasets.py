"""``palisade datasets``: create (encrypted upload + pipeline job), show, list, delete. Thin: every rule is in
``gateway.datasets.service``; the local operator acts as principal ``cli`` (sees every dataset, can never
approve: approval needs a person's console session with a fresh MFA step-up)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click
import msgspec

from gateway.cli.common import settings_or_exit
from gateway.context import RequestContext


@asynccontextmanager
async def _service() -> AsyncIterator[Any]:
    """Only what dataset commands need (db, keyring, audit chain, job queue), not the whole composition root."""
    from gateway.audit.chain import AuditChain
    from gateway.crypto import open_keyring
    from gateway.datasets.service import DatasetService
    from gateway.db.migrate import upgrade
    from gateway.db.session import Database
    from gateway.jobs import JobQueue

    settings = settings_or_exit()
    if settings.is_sqlite:
        await asyncio.to_thread(upgrade, settings)
    db = Database(settings)
    keyring = await open_keyring(settings, db)
    audit = await AuditChain.open(settings, db, keyring)
    try:
        yield DatasetService(settings, db, keyring, audit, JobQueue(settings))
    finally:
        await audit.close()
        await db.close()


def _emit(view: Any) -> None:
    click.echo(msgspec.json.encode(view).decode())


def _api_error(exc: Exception) -> click.ClickException:
    return click.ClickException(getattr(exc, "message", str(exc)))


@click.group()
def datasets() -> None:
    """Governed datasets: ingest, PII removal, filters, dedup, bias report, encrypted versions."""


@datasets.command("create")
@click.option("--name", required=True, help="Dataset name (a new version if it exists).")
@click.option("--file", "path", required=True, type=click.Path(exists=True, path_type=Path),
              help="JSONL, CSV, text file, zip, or a folder of .txt/.md files.")
@click.option("--format", "fmt", type=click.Choice(["auto", "chat", "prompt_completion", "text"]), default="auto",
              show_default=True)
@click.option("--classification", type=click.Choice(["public", "internal", "confidential", "restricted"]),
              default="internal", show_default=True)
@click.option("--purpose", default="", help="Why the data is processed (record of processing).")
@click.option("--legal-basis", default="", help="GDPR art. 6 basis, e.g. 'consent', 'legitimate interest'.")
@click.option("--source", default="", help="Where the data comes from (default: the file name).")
@click.option("--licence", default="", help="Licence or terms of use of the data.")
@click.option("--retention-days", type=int, default=None, help="Delete after this many days.")
@click.option("--pii", type=click.Choice(["redact", "mask", "pseudonymise"]), default="redact", show_default=True)
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="fail", show_default=True,
              help="A malformed line: skip it (reported with its line number) or fail the job.")
@click.option("--augment", multiple=True,
              type=click.Choice(["counterfactual", "paraphrase", "backtranslate", "synthetic"]),
              help="Augment the train split (repeatable); synthetic: rows for rare labels (config 'synthetic').")
@click.option("--augment-model", default=None,
              help="Model alias for paraphrase, backtranslate and synthetic (called with your rights).")
@click.option("--label-field", default=None, help="Import each row's labels from this JSONL field / CSV column.")
@click.option("--validation-fraction", type=float, default=0.1, show_default=True)
@click.option("--tokenizer", default=None, help="Local model folder (its tokenizer) or bpe:<vocab size>.")
@click.option("--seq-len", type=int, default=1024, show_default=True, help="Packed sequence length.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML/JSON pipeline settings: quality, dedup, bias, tags, synthetic sections, parallel_after, "
                   "pii_region, augment_pivot.")
@click.option("--wait", is_flag=True, help="Show progress on stderr; exit 0 when ready, 1 when failed.")
def create(name: str, path: Path, fmt: str, classification: str, purpose: str, legal_basis: str, source: str,
           licence: str, retention_days: int | None, pii: str, on_error: str, augment: tuple[str, ...],
           augment_model: str | None, label_field: str | None, validation_fraction: float,
           tokenizer: str | None, seq_len: int,
           config_file: Path | None, wait: bool) -> None:
    """Register a dataset version; prints its id alone on the last line."""
    from gateway.datasets.service import DatasetCreate
    from gateway.errors import ApiError

    req = DatasetCreate(name=name, format=fmt, classification=classification, purpose=purpose,
                        legal_basis=legal_basis, source=source, licence=licence, retention_days=retention_days,
                        pii=pii, on_error=on_error, augment=list(augment), augment_model=augment_model,
                        validation_fraction=validation_fraction,
                        tokenizer=tokenizer, seq_len=seq_len, config=_load_config(config_file))
    if label_field:
        req.config["tags"] = {**req.config.get("tags", {}), "label_field": label_field}

    async def go() -> Any:
        async with _service() as service:
            req.validate()
            upload_id, writer = service.new_upload()
            try:
                filename = _copy_into(path, writer)
            except BaseException:
                writer.abort()
                raise
            return await service.register(RequestContext.cli(), req, input_ref=f"upload:{upload_id}:{filename}",
                                          source_name=path.name)

    try:
        view = asyncio.run(go())
    except ApiError as exc:
        raise _api_error(exc) from exc
    click.echo(f"registered {name} version {view.number}; processing", err=True)
    if wait:
        status = _wait(view.id)
        click.echo(view.id)
        sys.exit(0 if status == "ready" else 1)
    click.echo(view.id)


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise click.ClickException(f"--config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise click.ClickException(f"--config {path}: expected a mapping")
    return raw


def _copy_into(path: Path, writer: Any) -> str:
    """Stream a file (or a folder, zipped on the fly) into the encrypted upload; returns the name to parse by."""
    if path.is_dir():
        root = path.resolve()
        with zipfile.ZipFile(_WriterFile(writer), "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for n in sorted(filenames):
                    p = Path(dirpath) / n
                    if not p.is_symlink() and n.lower().endswith((".txt", ".md")):
                        zf.write(p, str(p.relative_to(root)))
        writer.close()
        return f"{path.name}.zip"
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            writer.write(chunk)
    writer.close()
    return path.name


class _WriterFile(io.RawIOBase):
    """A write-only, unseekable file over an UploadWriter (zipfile then writes data descriptors)."""

    def __init__(self, writer: Any) -> None:
        super().__init__()
        self.writer = writer
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.writer.write(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass


def _wait(version_id: str, timeout_s: float = 24 * 3600) -> str:
    return asyncio.run(_poll(version_id, timeout_s))


_STAGE_FRACTION = {"queued": 0.0, "started": 0.05, "ingest": 0.1, "process": 0.4, "tokenise": 0.8, "store": 0.95,
                   "done": 1.0, "failed": 1.0}


async def _poll(version_id: str, timeout_s: float) -> str:
    """Follow the version's progress row (one database connection, no keyring) until it leaves processing."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from gateway.db.datasets import DatasetVersion
    from gateway.db.session import Database

    db = Database(settings_or_exit())
    deadline = time.monotonic() + timeout_s
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                      TimeElapsedColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task("queued", total=1.0, detail="")
            while time.monotonic() < deadline:
                async with db.session() as s:
                    row = await s.get(DatasetVersion, version_id)
                    status, progress, error = row.status, dict(row.progress or {}), row.error
                stage, done = progress.get("stage", status), progress.get("done", 0)
                detail = f"{int(done)} records" if stage == "process" else ""
                bar.update(task, description=f"{status}: {stage}", completed=_STAGE_FRACTION.get(stage, 0.5),
                           detail=detail)
                if status != "processing":
                    if status == "failed":
                        click.echo(f"failed: {error}", err=True)
                    return status
                await asyncio.sleep(0.3)
    finally:
        await db.close()
    click.echo("timed out waiting", err=True)
    return "processing"


@datasets.command("show")
@click.argument("version_id")
@click.option("--markdown", is_flag=True, help="The data card as Markdown instead of JSON.")
def show(version_id: str, markdown: bool) -> None:
    """The data card of a version as JSON (one object on the last line)."""
    from gateway.datasets.markdown import to_markdown
    from gateway.errors import ApiError

    async def go() -> Any:
        async with _service() as service:
            return await service.get(RequestContext.cli(), version_id)

    try:
        view = asyncio.run(go())
    except ApiError as exc:
        raise _api_error(exc) from exc
    if markdown:
        if not view.card:
            raise click.ClickException(f"version {version_id} has no data card yet ({view.status})")
        fields = msgspec.to_builtins(view)
        click.echo(to_markdown({**view.card, **{k: v for k, v in fields.items() if k != "card"}}))
        return
    _emit(view)


@datasets.command("list")
def list_versions() -> None:
    """Every dataset version, newest first: {"datasets": [...]}."""

    async def go() -> Any:
        async with _service() as service:
            return await service.list(RequestContext.cli())

    views = asyncio.run(go())
    for v in views:
        click.echo(f"{v.id}  {v.name} v{v.number}  {v.status}{' (deleted)' if v.deleted else ''}", err=True)
    click.echo(msgspec.json.encode({"datasets": [
        {k: v for k, v in msgspec.to_builtins(view).items() if k != "card"} for view in views]}).decode())


@datasets.command("delete")
@click.argument("version_id")
def delete(version_id: str) -> None:
    """Delete a version's shards and quarantine (right to erasure); its record and audit trail stay."""
    from gateway.errors import ApiError

    async def go() -> Any:
        async with _service() as service:
            return await service.delete(RequestContext.cli(), version_id)

    try:
        view = asyncio.run(go())
    except ApiError as exc:
        raise _api_error(exc) from exc
    _emit(view)


@datasets.command("export")
@click.argument("version_id")
@click.option("--split", type=click.Choice(["train", "validation"]), default="validation", show_default=True)
@click.option("--label", default=None, help="Only records with this label.")
@click.option("--tag", default=None, help="Only records with this tag: name=value (topic=billing, language=de).")
@click.option("--include-synthetic", is_flag=True, help="Keep augmented/synthetic rows (left out by default).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The evaluation-set JSONL to write (mode 0600).")
def export(version_id: str, split: str, label: str | None, tag: str | None, include_synthetic: bool,
           out: Path) -> None:
    """Write a version's records with a tag/label as an evaluation-set JSONL; prints {"path", "records"} last."""
    from gateway.errors import ApiError

    async def go() -> Any:
        async with _service() as service:
            return await service.export(RequestContext.cli(), version_id, out, split=split, label=label, tag=tag,
                                        include_synthetic=include_synthetic)

    try:
        count, _ = asyncio.run(go())
    except ApiError as exc:
        raise _api_error(exc) from exc
    click.echo(f"wrote {count} records to {out}", err=True)
    click.echo(msgspec.json.encode({"path": str(out), "records": count}).decode())

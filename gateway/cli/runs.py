"""``palisade runs …``: request, follow, cancel and list training runs (the rules are in ``RunService``).

    palisade runs create --dataset ID --method sft-lora --base DIR --set max_steps=100   # last line: the run id
    palisade runs show ID --follow                                                       # progress bar, then JSON
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
import msgspec
import yaml

from gateway.audit.events import AuditEvent
from gateway.cli.common import cli_audit, emit_json, run_db, settings_or_exit
from gateway.context import RequestContext
from gateway.db.runs import FINAL
from gateway.errors import ApiError
from gateway.jobs import JobQueue
from gateway.runs.service import METHODS, RunCreate, RunService

SET_KEYS = ("max_steps", "epochs", "learning_rate", "batch_size", "seq_len", "lora_rank")


class _CliTrail:
    """The CLI's audit appends, behind the trail interface the service takes."""

    def __init__(self, db) -> None:
        self.db = db

    async def record(self, event: AuditEvent) -> None:
        await cli_audit(self.db, event)


def _service(db) -> RunService:
    return RunService(db, _CliTrail(db), JobQueue(settings_or_exit()).enqueue)


def _load(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping")
    return data


def _scalar(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool | str) else text


def _call(fn) -> Any:
    try:
        return run_db(fn)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def runs() -> None:
    """Training runs: request (then a person approves), follow, cancel."""


@runs.command("create")
@click.option("--dataset", required=True, help="An approved dataset version id.")
@click.option("--method", required=True, type=click.Choice(METHODS))
@click.option("--base", default=None, help="Registry model version, model directory, or preset:NAME.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML/JSON: settings, or {config: {...}, gates: [...]}.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=f"A setting ({', '.join(SET_KEYS)}, ...).")
@click.option("--sweep", "sweep_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML/JSON sweep: trials, metric, sampler, pruner, parameters.")
def create(dataset: str, method: str, base: str | None, config_file: Path | None, sets: tuple[str, ...],
           sweep_file: Path | None) -> None:
    """Request a run; prints the run id alone on the last line."""
    loaded = _load(config_file)
    config = dict(loaded.get("config", {}) if "config" in loaded else {k: v for k, v in loaded.items()
                                                                         if k != "gates"})
    for pair in sets:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"--set expects key=value, got {pair!r}")
        config[key.strip()] = _scalar(value.strip())
    body = msgspec.convert({"dataset": dataset, "method": method, "base": base, "config": config,
                            "gates": loaded.get("gates", []), "sweep": _load(sweep_file) or None}, RunCreate)
    view = _call(lambda db: _service(db).create(RequestContext.cli(), body))
    click.echo(view.id)


@runs.command("show")
@click.argument("run_id")
@click.option("--follow", is_flag=True, help="Show a progress bar until the run ends.")
def show(run_id: str, follow: bool) -> None:
    """The run as JSON (status, metrics with the loss list, gates, candidate_version)."""
    if follow:
        _follow(run_id)
    view = _call(lambda db: _service(db).get(RequestContext.cli(), run_id))
    emit_json(msgspec.to_builtins(view))


def _follow(run_id: str) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    async def poll(db) -> None:
        service, ctx = _service(db), RequestContext.cli()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("queued", total=None, loss="-")
            while True:
                view = await service.get(ctx, run_id)
                m = view.metrics
                loss = f"{m['loss'][-1]:.4f}" if m.get("loss") else "-"
                bar.update(task, description=view.status, total=m.get("total_steps"), completed=m.get("step", 0),
                           loss=loss)
                if view.status in FINAL:
                    return
                await asyncio.sleep(2.0)

    _call(poll)


@runs.command("cancel")
@click.argument("run_id")
def cancel(run_id: str) -> None:
    """Cancel a run (a running one stops at its next step, keeping its checkpoint)."""
    view = _call(lambda db: _service(db).cancel(RequestContext.cli(), run_id))
    emit_json({"id": view.id, "status": view.status})


@runs.command("list")
def list_runs() -> None:
    """Runs, newest first, as one JSON object."""
    views = _call(lambda db: _service(db).list(RequestContext.cli()))
    emit_json({"runs": [{"id": v.id, "kind": v.kind, "status": v.status, "method": v.method,
                         "dataset": v.dataset, "requester": v.requester, "created_at": v.created_at}
                        for v in views]})

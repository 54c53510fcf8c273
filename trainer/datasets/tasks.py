"""The Celery task: a dataset version id in, the pipeline run, the outcome written through the gateway's
dataset service (status, card, manifest, audit). Progress is written to the version row about once a second.

A redelivered job (``acks_late`` after a worker crash) finds its version still ``processing``, deletes what the
crashed attempt stored and starts again; a job whose version is gone or already decided does nothing.

With ``chunk_records`` in the pipeline config, a large input becomes a chord (``trainer.datasets.chunks``): the
process task parses it into sealed chunks, ``palisade.datasets.prepare_chunk`` runs once per chunk on any worker,
and ``palisade.datasets.finish_chunks`` (the callback) does the rest and writes the outcome; if a chunk fails,
``palisade.datasets.chunks_failed`` fails the version and removes what was stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from celery import shared_task

from gateway.context import RequestContext, new_request_id
from gateway.datasets.service import DatasetService
from gateway.datasets.shards import KeyringSealer
from gateway.datasets.uploads import open_upload
from gateway.db.datasets import DatasetVersion
from gateway.observability import tracing
from trainer.datasets import chunks
from trainer.datasets.ingest import IngestError, Source
from trainer.datasets.pii import HmacPseudonymiser
from trainer.datasets.pipeline import PipelineConfig, run_pipeline

_log = structlog.get_logger("palisade.datasets")


@shared_task(name="palisade.datasets.process")
def process(version_id: str) -> dict[str, Any]:
    from gateway.runtime import run_in_services

    return run_in_services(lambda services: _run(services, version_id))


@shared_task(name="palisade.datasets.prepare_chunk")
def prepare_chunk_task(version_id: str, index: int) -> dict[str, Any]:
    """One chunk of a large input (a chord's header task): normalise, PII, filters on whichever worker takes it."""
    from gateway.runtime import run_in_services

    return run_in_services(lambda services: _prepare_chunk(services, version_id, index))


@shared_task(name="palisade.datasets.finish_chunks")
def finish_chunks_task(counters: list[dict[str, Any]], version_id: str, chunks: int,
                       report: dict[str, Any]) -> dict[str, Any]:
    """The chord's callback: the prepared chunks through dedup, split, augment, bias, store."""
    from gateway.runtime import run_in_services

    return run_in_services(lambda services: _run(services, version_id,
                                                 chunked={"chunks": chunks, "report": report, "counters": counters}))


@shared_task(name="palisade.datasets.chunks_failed")
def chunks_failed_task(*args: Any, version_id: str = "") -> None:
    """A chunk failed, so the chord's callback never runs: fail the version and remove what was stored."""
    from gateway.runtime import run_in_services

    async def fail(services: Any) -> None:
        services.datasets.store.delete_prefix(version_id)
        await services.datasets.fail(version_id, "a chunk of the input could not be prepared")

    run_in_services(fail)


def _pseudonym(keyring: Any, version_id: str) -> HmacPseudonymiser:
    # keyed by the datasets data key and the version: the same value -> the same token within a version only,
    # on every worker of a chord alike
    return HmacPseudonymiser(bytes.fromhex(keyring.hmac("datasets", f"pii-pseudonyms\x1f{version_id}")
                                           .split(":", 1)[1]))


async def _prepare_chunk(services: Any, version_id: str, index: int) -> dict[str, Any]:
    service: DatasetService = services.datasets
    async with service.db.session() as s:
        row = await s.get(DatasetVersion, version_id)
        if row is None or row.deleted_at is not None or row.status != "processing":
            raise RuntimeError(f"dataset version {version_id} is no longer processing")
        raw_config = row.pipeline_config
    config = PipelineConfig.from_dict(raw_config)
    return await asyncio.to_thread(chunks.prepare_chunk, config, service.store,
                                   KeyringSealer(service.keyring, version_id), version_id, index,
                                   _pseudonym(service.keyring, version_id))


async def _run(services: Any, version_id: str, chunked: dict[str, Any] | None = None) -> dict[str, Any]:
    service: DatasetService = services.datasets
    row = await service.claim(version_id)
    if row is None:
        return {"id": version_id, "status": "skipped"}
    assert service.store is not None
    if chunked is None:
        service.store.delete_prefix(version_id)  # a crashed earlier attempt's partial shards
    keyring = service.keyring
    sealer = KeyringSealer(keyring, version_id)
    try:
        source = _source(service, row.input_ref or "") if chunked is None else Path(row.source or "input")
        config = PipelineConfig.from_dict(row.pipeline_config)
        config = dataclasses.replace(config, workers=service.settings.dataset_workers or os.cpu_count() or 1)
    except Exception as exc:  # noqa: BLE001 - a bad input reference or config fails the version, with its reason
        await service.fail(version_id, f"cannot start: {exc}")
        return {"id": version_id, "status": "failed"}
    pseudonym = _pseudonym(keyring, version_id)

    if chunked is None and config.chunk_records > 0:
        return await _split_into_chord(service, version_id, source, config, sealer)

    latest: dict[str, Any] = {}
    phases = tracing.Phases("dataset", version=version_id)  # a span per stage, children of the task's span

    def progress(stage: str, done: float) -> None:
        phases.enter(stage)
        latest.update(stage=stage, done=done)

    ask = None
    if {"paraphrase", "backtranslate", "synthetic"} & set(config.augment):
        principal = await services.identity.principal_for(row.owner)
        if principal is None:
            service.store.delete_prefix(version_id)
            await service.fail(version_id, "the registrant is no longer active; model augmentation acts with "
                                           "their rights")
            return {"id": version_id, "status": "failed"}
        await services.models.ensure_loaded(config.augment_model or "")  # a worker loads only what its jobs call
        ask = _asker(services, RequestContext.for_principal(principal, priority="batch"),
                     config.augment_model or "", asyncio.get_running_loop())

    if chunked is None:
        work = functools.partial(run_pipeline, source, config, store=service.store, sealer=sealer,
                                 version_id=version_id, pseudonym=pseudonym, progress=progress, ask=ask)
    else:
        work = functools.partial(chunks.finish, str(source), config, service.store, sealer, version_id,
                                 chunked["chunks"], chunked["report"], chunked["counters"], pseudonym=pseudonym,
                                 progress=progress, ask=ask)
    job = asyncio.ensure_future(asyncio.to_thread(work))
    written: dict[str, Any] = {}
    while not job.done():
        await asyncio.wait({job}, timeout=1.0)
        if latest and latest != written:
            written = dict(latest)
            await service.set_progress(version_id, written)
    phases.close()
    try:
        result = job.result()
    except IngestError as exc:
        await _ingest_failed(service, version_id, exc)
        return {"id": version_id, "status": "failed"}
    except Exception as exc:  # noqa: BLE001 - any pipeline failure fails the version, with its reason
        _log.warning("dataset pipeline failed", version=version_id, error=str(exc),
                     trace=traceback.format_exc(limit=5))
        await service.fail(version_id, f"{type(exc).__name__}: {exc}")
        return {"id": version_id, "status": "failed"}
    manifest = {"version": result.manifest.version, "shards": result.manifest.shards}
    await service.finish(version_id, result.card, manifest, result.manifest.digest)
    return {"id": version_id, "status": "ready", "digest": result.manifest.digest}


async def _ingest_failed(service: DatasetService, version_id: str, exc: IngestError) -> None:
    lines = ", ".join(str(line) for line, _ in exc.errors[:20])
    await service.fail(version_id, f"{exc}" + (f" (lines {lines})" if lines else ""))


async def _split_into_chord(service: DatasetService, version_id: str, source: Any, config: PipelineConfig,
                            sealer: KeyringSealer) -> dict[str, Any]:
    """Parse the input into sealed chunks, then a chord: every chunk prepared by whichever worker is free, the
    rest of the pipeline once all are done (or the version failed when one is not)."""
    from celery import chord, group

    assert service.store is not None
    try:
        count, report = await asyncio.to_thread(chunks.split_input, source, config, service.store, sealer,
                                                version_id)
    except Exception as exc:  # noqa: BLE001 - like a single pass: the version fails with its reason
        service.store.delete_prefix(version_id)
        if isinstance(exc, IngestError):
            await _ingest_failed(service, version_id, exc)
        else:
            await service.fail(version_id, f"{type(exc).__name__}: {exc}")
        return {"id": version_id, "status": "failed"}
    await service.set_progress(version_id, {"stage": "chunks", "done": 0, "chunks": count})
    callback = finish_chunks_task.s(version_id, count, report).on_error(
        chunks_failed_task.s(version_id=version_id))
    chord(group(prepare_chunk_task.s(version_id, i) for i in range(count)))(callback)
    return {"id": version_id, "status": "chunked", "chunks": count}


def _asker(services: Any, ctx: RequestContext, alias: str,
           loop: asyncio.AbstractEventLoop) -> Callable[[str, str], str]:
    """``ask(instruction, text)`` for the pipeline thread (paraphrase, back-translation, synthetic rows): one call
    through the gateway's inference entry point, as the requester (authorised against their policy and model
    scope, rate-limited, audited with origin "task")."""
    from gateway.inference.base import GenerationRequest, SamplingParams

    def ask(instruction: str, text: str) -> str:
        req = GenerationRequest(request_id=new_request_id(), params=SamplingParams(max_tokens=512, temperature=0.7),
                                messages=[{"role": "system", "content": instruction},
                                          {"role": "user", "content": text}])
        call = asyncio.run_coroutine_threadsafe(services.inference.generate(ctx, alias, req), loop)
        return call.result(timeout=services.settings.request_timeout_s + 10).result.text.strip()

    return ask


def _source(service: DatasetService, input_ref: str) -> Source | Path:
    kind, _, rest = input_ref.partition(":")
    if kind == "upload":
        upload_id, _, name = rest.partition(":")
        path = service.uploads_dir / upload_id
        if not path.is_file():
            raise ValueError("the uploaded file is gone")
        return Source(name or "upload", lambda: open_upload(path, service.keyring, upload_id))
    if kind == "import":
        return service.resolve_import(rest)  # checked again: the folder may have changed since the request
    raise ValueError("unknown input")

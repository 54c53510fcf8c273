"""The Celery task: a dataset version id in, the pipeline run, the outcome written through the gateway's
dataset service (status, card, manifest, audit). Progress is written to the version row about once a second.

A redelivered job (``acks_late`` after a worker crash) finds its version still ``processing``, deletes what the
crashed attempt stored and starts again; a job whose version is gone or already decided does nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from trainer.datasets.ingest import IngestError, Source
from trainer.datasets.pii import HmacPseudonymiser
from trainer.datasets.pipeline import PipelineConfig, run_pipeline

_log = structlog.get_logger("palisade.datasets")


@shared_task(name="palisade.datasets.process")
def process(version_id: str) -> dict[str, Any]:
    from gateway.runtime import run_in_services

    return run_in_services(lambda services: _run(services, version_id))


async def _run(services: Any, version_id: str) -> dict[str, Any]:
    service: DatasetService = services.datasets
    row = await service.claim(version_id)
    if row is None:
        return {"id": version_id, "status": "skipped"}
    assert service.store is not None
    service.store.delete_prefix(version_id)  # a crashed earlier attempt's partial shards
    keyring = service.keyring
    try:
        source = _source(service, row.input_ref or "")
        config = PipelineConfig.from_dict(row.pipeline_config)
        config = dataclasses.replace(config, workers=service.settings.dataset_workers or os.cpu_count() or 1)
    except Exception as exc:  # noqa: BLE001 - a bad input reference or config fails the version, with its reason
        await service.fail(version_id, f"cannot start: {exc}")
        return {"id": version_id, "status": "failed"}

    # keyed by the datasets data key and the version: the same value -> the same token within a version only
    pseudonym = HmacPseudonymiser(bytes.fromhex(keyring.hmac("datasets", f"pii-pseudonyms\x1f{version_id}")
                                                .split(":", 1)[1]))

    latest: dict[str, Any] = {}

    def progress(stage: str, done: float) -> None:
        latest.update(stage=stage, done=done)

    ask = None
    if {"paraphrase", "backtranslate", "synthetic"} & set(config.augment):
        principal = await services.identity.principal_for(row.owner)
        if principal is None:
            await service.fail(version_id, "the registrant is no longer active; model augmentation acts with "
                                           "their rights")
            return {"id": version_id, "status": "failed"}
        await services.models.ensure_loaded(config.augment_model or "")  # a worker loads only what its jobs call
        ask = _asker(services, RequestContext.for_principal(principal, priority="batch"),
                     config.augment_model or "", asyncio.get_running_loop())

    job = asyncio.ensure_future(asyncio.to_thread(
        run_pipeline, source, config, store=service.store, sealer=KeyringSealer(keyring, version_id),
        version_id=version_id, pseudonym=pseudonym, progress=progress, ask=ask))
    written: dict[str, Any] = {}
    while not job.done():
        await asyncio.wait({job}, timeout=1.0)
        if latest and latest != written:
            written = dict(latest)
            await service.set_progress(version_id, written)
    try:
        result = job.result()
    except IngestError as exc:
        lines = ", ".join(str(line) for line, _ in exc.errors[:20])
        await service.fail(version_id, f"{exc}" + (f" (lines {lines})" if lines else ""))
        return {"id": version_id, "status": "failed"}
    except Exception as exc:  # noqa: BLE001 - any pipeline failure fails the version, with its reason
        _log.warning("dataset pipeline failed", version=version_id, error=str(exc),
                     trace=traceback.format_exc(limit=5))
        await service.fail(version_id, f"{type(exc).__name__}: {exc}")
        return {"id": version_id, "status": "failed"}
    manifest = {"version": result.manifest.version, "shards": result.manifest.shards}
    await service.finish(version_id, result.card, manifest, result.manifest.digest)
    return {"id": version_id, "status": "ready", "digest": result.manifest.digest}


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

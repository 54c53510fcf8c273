"""Admin API for governed datasets (thin: parse, call the dataset service, answer its view).

``POST /admin/datasets`` takes multipart form data (a ``file`` part plus the CLI's option names as fields) and
streams the file straight into an encrypted upload (never in clear on disk, never whole in memory), with the
size limit from ``PALISADE_DATASET_UPLOAD_MAX_BYTES``; or JSON with ``path`` (relative to the server's import
folder) instead of a file.
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from multipart import MultipartSegment, ParserError, PushMultipartParser, parse_options_header

from gateway.api.deps import ContextDep, ServicesDep
from gateway.authz.actions import Action
from gateway.datasets.service import DatasetCreate, DatasetService, DatasetView, Decision
from gateway.datasets.uploads import UploadTooLarge
from gateway.errors import BadRequest, PayloadTooLarge

_FIELD_LIMIT = 64 * 1024
_INT_FIELDS = ("retention_days", "seq_len")
_FLOAT_FIELDS = ("validation_fraction",)


class DatasetList(msgspec.Struct):
    datasets: list[DatasetView]


class DatasetController(Controller):
    path = "/admin/datasets"
    tags = ["datasets"]

    @post("/", opt={"action": Action.DATASET_CREATE}, operation_id="createDataset", status_code=201,
          request_max_body_size=None)
    async def create(self, request: Request, services: ServicesDep, ctx: ContextDep) -> DatasetView:
        service = services.datasets
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        if content_type == "application/json":
            body = await _small_body(request)
            try:
                raw = json.loads(body)
                path = raw.pop("path", None) if isinstance(raw, dict) else None
                req = msgspec.convert(raw, DatasetCreate)
            except (ValueError, msgspec.ValidationError) as exc:
                raise BadRequest(f"invalid request: {exc}") from exc
            if not isinstance(path, str) or not path:
                raise BadRequest("give a multipart 'file' or a JSON 'path' inside the import folder", param="path")
            try:
                resolved = service.resolve_import(path)
            except BadRequest as exc:
                await service.refuse_import(ctx, path, exc.message)
                raise
            req.validate()
            return await service.register(ctx, req, input_ref=f"import:{path}", source_name=resolved.name)
        if content_type != "multipart/form-data" or not options.get("boundary"):
            raise BadRequest("send multipart/form-data with a 'file' part, or JSON with 'path'")
        declared = request.headers.get("content-length")
        limit = service.settings.dataset_upload_max_bytes
        if declared and declared.isdigit() and int(declared) > limit + 1024 * 1024:
            raise PayloadTooLarge(f"dataset uploads are limited to {limit} bytes")
        fields, upload = await _stream_form(request, service, options["boundary"])
        upload_id, filename = upload
        try:
            req = msgspec.convert(_typed(fields), DatasetCreate, strict=False)
            req.validate()
        except (msgspec.ValidationError, ValueError, BadRequest) as exc:
            service.discard_upload(f"upload:{upload_id}")
            raise exc if isinstance(exc, BadRequest) else BadRequest(f"invalid field: {exc}") from exc
        return await service.register(ctx, req, input_ref=f"upload:{upload_id}:{filename}", source_name=filename)

    @get("/", opt={"action": Action.DATASET_READ}, operation_id="listDatasets")
    async def list_versions(self, services: ServicesDep, ctx: ContextDep) -> DatasetList:
        return DatasetList(datasets=await services.datasets.list(ctx))

    @get("/{version_id:str}", opt={"action": Action.DATASET_READ}, operation_id="getDataset")
    async def show(self, services: ServicesDep, ctx: ContextDep, version_id: str) -> DatasetView:
        return await services.datasets.get(ctx, version_id)

    @get("/{version_id:str}/quarantine", opt={"action": Action.DATASET_QUARANTINE_READ},
         operation_id="sampleDatasetQuarantine")
    async def quarantine(self, services: ServicesDep, ctx: ContextDep, version_id: str) -> dict[str, Any]:
        return await services.datasets.quarantine_sample(ctx, version_id)

    @get("/{version_id:str}/export", opt={"action": Action.DATASET_EXPORT}, operation_id="exportDatasetRecords")
    async def export(self, services: ServicesDep, ctx: ContextDep, version_id: str, split: str = "validation",
                     label: str | None = None, tag: str | None = None,
                     include_synthetic: bool = False) -> Response[bytes]:
        """The records of a split with a label and/or tag (an evaluation set) as JSONL."""
        _, rows = await services.datasets.export(ctx, version_id, split=split, label=label, tag=tag,
                                                 include_synthetic=include_synthetic)
        body = b"".join(msgspec.json.encode(r) + b"\n" for r in rows)
        return Response(body, media_type="application/x-ndjson")

    @post("/{version_id:str}/approve", opt={"action": Action.DATASET_APPROVE}, operation_id="approveDataset",
          status_code=200)
    async def approve(self, services: ServicesDep, ctx: ContextDep, version_id: str,
                      data: Decision | None = None) -> DatasetView:
        return await services.datasets.approve(ctx, version_id, data or Decision())

    @post("/{version_id:str}/reject", opt={"action": Action.DATASET_REJECT}, operation_id="rejectDataset",
          status_code=200)
    async def reject(self, services: ServicesDep, ctx: ContextDep, version_id: str,
                     data: Decision | None = None) -> DatasetView:
        return await services.datasets.reject(ctx, version_id, data or Decision())

    @delete("/{version_id:str}", opt={"action": Action.DATASET_DELETE}, operation_id="deleteDataset",
            status_code=200)
    async def remove(self, services: ServicesDep, ctx: ContextDep, version_id: str) -> DatasetView:
        return await services.datasets.delete(ctx, version_id)


async def _small_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FIELD_LIMIT:
            raise PayloadTooLarge("JSON request body is too large")
    return body


async def _stream_form(request: Request, service: DatasetService, boundary: str
                       ) -> tuple[dict[str, str], tuple[str, str]]:
    """Fields as strings, and the file streamed into an encrypted upload: ``(fields, (upload_id, filename))``."""
    fields: dict[str, str] = {}
    upload_id, writer = service.new_upload()
    filename: str | None = None
    current: MultipartSegment | None = None
    value = bytearray()
    try:
        with PushMultipartParser(boundary, max_segment_count=64) as parser:
            async for chunk in request.stream():
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        current, value = event, bytearray()
                        if event.name == "file":
                            if filename is not None:
                                raise BadRequest("only one 'file' part", param="file")
                            filename = _safe_name(event.filename or "upload")
                    elif event is None:
                        if current is not None and current.name != "file":
                            fields[current.name] = value.decode("utf-8", errors="strict")
                        current = None
                    elif current is not None and current.name == "file":
                        writer.write(bytes(event))
                    else:
                        value += event
                        if len(value) > _FIELD_LIMIT:
                            raise BadRequest("a form field is too large")
            for _ in parser.parse(b""):
                pass
        if filename is None:
            raise BadRequest("multipart request has no 'file' part", param="file")
        writer.close()
    except UploadTooLarge as exc:
        writer.abort()
        raise PayloadTooLarge(str(exc)) from exc
    except (ParserError, UnicodeDecodeError) as exc:
        writer.abort()
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    except BaseException:
        writer.abort()
        raise
    return fields, (upload_id, filename)


def _safe_name(name: str) -> str:
    base = PurePath(name.replace("\\", "/")).name
    return "".join(c for c in base if c.isalnum() or c in "._-")[:200] or "upload"


def _typed(fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    label_field = ""
    for key, value in fields.items():
        if key in _INT_FIELDS:
            out[key] = int(value) if value.strip() else None
        elif key in _FLOAT_FIELDS:
            out[key] = float(value)
        elif key == "augment":
            out[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif key == "config":
            out[key] = json.loads(value) if value.strip() else {}
        elif key == "legal-basis":
            out["legal_basis"] = value
        elif key in ("on-error", "augment-model"):
            out[key.replace("-", "_")] = value
        elif key in ("label-field", "label_field"):
            label_field = value.strip()
        else:
            out[key] = value
    if label_field:  # like the CLI's --label-field: the tags section of the pipeline config
        config = out.setdefault("config", {})
        if isinstance(config, dict):
            config["tags"] = {**(config.get("tags") or {}), "label_field": label_field}
    return out


DATASET_ROUTES = [DatasetController]

"""Audit pages for compliance officers: search and filter, a record with its place in the chain, the trail's
status with ``verify`` on demand, and export (JSONL or CSV) with the signed manifest and the public key.

An export is written under the data dir (``exports/<random id>/``) by the same code as ``palisade audit export``,
is itself an audit event, and can be downloaded only by the person who made it. ``palisade audit verify-export
FILE --public-key KEY.pem`` checks the three downloaded files offline.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from litestar import get, post
from litestar.exceptions import NotFoundException
from litestar.response import File, Response, Template

from gateway.audit.chain import head_file_of
from gateway.audit.events import Tag
from gateway.audit.export import export, manifest_path
from gateway.audit.pins import keys_file_of
from gateway.audit.signing import public_pem
from gateway.audit.verify import verify_trail
from gateway.authz.actions import Action
from gateway.console.access import UIDep, fragment
from gateway.console.audit_query import filters_from, record_view, search, trail_status
from gateway.console.security import HEADERS
from gateway.console.stepup import ensure_step_up

READ = {"action": Action.AUDIT_READ}
EXPORT = {"action": Action.AUDIT_EXPORT}
_EXPORT_ID = re.compile(r"^[0-9a-f]{24}$")
_FILE = re.compile(r"^audit-[0-9TZ-]+\.(jsonl|csv)(\.manifest\.json)?$")
OWNER_FILE = ".owner"


@get("/audit", opt=READ, include_in_schema=False)
async def audit_page(ui: UIDep) -> Template:
    params = ui.request.query_params
    filters = filters_from(params)
    result = await search(ui.services.db, filters, params.get("before"))
    query = {k: str(params.get(k) or "") for k in ("since", "until", "actor", "action", "model", "decision")}
    template = "audit_rows.html" if ui.request.headers.get("hx-request") == "true" and params.get("before") else (
        "audit.html")
    return await ui.page(template, result=result, q=query,
                      may_export=await ui.can(Action.AUDIT_EXPORT))


@get("/audit/records/{seq:int}", opt=READ, include_in_schema=False)
async def audit_record(ui: UIDep, seq: int) -> Template:
    view = await record_view(ui.services.db, seq)
    if view is None:
        raise NotFoundException(f"no audit record {seq}")
    return await ui.page("audit_record.html", view=view)


@get("/audit/status", opt=READ, include_in_schema=False)
async def audit_status(ui: UIDep) -> Template:
    s = ui.services
    status = await trail_status(s.db, s.audit)
    return await ui.page("audit_status.html", status=status)


@post("/audit/verify", opt=READ, include_in_schema=False, status_code=200)
async def audit_verify(ui: UIDep) -> Template:
    """The same check as ``palisade audit verify``, against the pinned keys and the external head."""
    form = await ui.request.form()
    settings = ui.services.settings
    since = str(form.get("from_seq") or "").strip()
    report = await asyncio.to_thread(
        verify_trail, settings.database_url, head_file=head_file_of(settings), keys_file=keys_file_of(settings),
        from_seq=int(since) if since.isdigit() and len(since) < 20 else None, in_flight_s=settings.audit_in_flight_s,
    )
    return fragment("audit_verified.html", report=report)


def _exports_dir(ui: UIDep) -> Path:
    return ui.services.settings.data_dir / "exports"


@post("/audit/export", opt=EXPORT, include_in_schema=False, status_code=200)
async def audit_export(ui: UIDep) -> Template:
    form = await ui.request.form()
    if not await ensure_step_up(ui, form):
        return fragment("audit_exported.html", status_code=403,
                        error="Exporting needs a code from your authenticator (your last check is older "
                              "than 5 minutes).")
    fmt = "csv" if form.get("format") == "csv" else "jsonl"
    filters = filters_from(form)
    s = ui.services
    export_id = secrets.token_hex(12)
    folder = _exports_dir(ui) / export_id
    folder.mkdir(parents=True, mode=0o700)
    (folder / OWNER_FILE).write_text(ui.principal.id)
    name = f"audit-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{fmt}"
    out = folder / name
    await s.audit.checkpoint()  # the manifest then carries a signature over the current head
    manifest = await asyncio.to_thread(export, s.settings.database_url, out, s.audit.signer, filters, fmt)
    await ui.record(Tag.AUDIT_EXPORT, target=name, filters=filters.describe(), format=fmt,
                 count=manifest["count"], sha256=manifest["sha256"], range=manifest["range"])
    return fragment("audit_exported.html", error=None, export_id=export_id, name=name,
                    manifest_name=manifest_path(out).name, manifest=manifest)


@get("/audit/exports/{export_id:str}/{name:str}", opt=EXPORT, include_in_schema=False)
async def audit_download(ui: UIDep, export_id: str, name: str) -> File:
    """One file of an export, only to the person who made it (anyone else: 404, not 403)."""
    folder = _exports_dir(ui) / export_id
    if not _EXPORT_ID.match(export_id) or not _FILE.match(name) or not folder.is_dir():
        raise NotFoundException("no such export")
    owner = (folder / OWNER_FILE).read_text() if (folder / OWNER_FILE).exists() else ""
    path = folder / name
    if owner != ui.principal.id or not path.is_file():
        raise NotFoundException("no such export")
    media = "application/json" if name.endswith(".json") else (
        "text/csv" if name.endswith(".csv") else "application/x-ndjson")
    return File(path=path, filename=name, media_type=media, headers=HEADERS)


@get("/audit/public-key", opt=READ, include_in_schema=False)
async def audit_public_key(ui: UIDep) -> Response:
    """The audit signing public key (PEM), for ``palisade audit verify-export --public-key``."""
    pem = public_pem(ui.services.audit.signer.public)
    return Response(pem, media_type="application/x-pem-file", headers={
        **HEADERS, "Content-Disposition": 'attachment; filename="palisade-audit-public-key.pem"'})


ROUTES = [audit_page, audit_record, audit_status, audit_verify, audit_export, audit_download, audit_public_key]

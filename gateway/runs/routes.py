"""Admin API for training runs (thin: the rules are in ``RunService``).

``POST /admin/runs`` request, ``GET /admin/runs`` list, ``GET /admin/runs/{id}`` show, ``GET /admin/runs/{id}/events``
live progress as server-sent events, ``POST /admin/runs/{id}/approve`` (a person's session with its CSRF header,
MFA within 5 minutes, not the requester), ``POST /admin/runs/{id}/cancel``. Bodies use the CLI's option names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.params import Parameter

from gateway.api.deps import ContextDep, ServicesDep
from gateway.api.sse import SSE_HEADERS, EventStream, event
from gateway.authz.actions import Action
from gateway.db.runs import FINAL
from gateway.runs.service import RunCreate, RunService, RunView
from gateway.services import Services

RunId = Annotated[str, Parameter(max_length=64)]


class Approve(msgspec.Struct, forbid_unknown_fields=True):
    """``digest``: the request digest the approver reviewed; a request changed since then is refused (409)."""

    digest: str | None = None


class RunList(msgspec.Struct):
    runs: list[RunView]


def runs_of(services: Services) -> RunService:
    return RunService(services.db, services.audit, services.jobs.enqueue)


class RunsController(Controller):
    path = "/admin/runs"
    tags = ["training"]

    @post("/", opt={"action": Action.RUN_CREATE}, operation_id="createRun", status_code=201)
    async def create(self, services: ServicesDep, ctx: ContextDep, data: RunCreate) -> RunView:
        return await runs_of(services).create(ctx, data)

    @get("/", opt={"action": Action.RUN_READ}, operation_id="listRuns")
    async def list_runs(self, services: ServicesDep, ctx: ContextDep) -> RunList:
        return RunList(runs=await runs_of(services).list(ctx))

    @get("/{run_id:str}", opt={"action": Action.RUN_READ}, operation_id="getRun")
    async def show(self, services: ServicesDep, ctx: ContextDep, run_id: RunId) -> RunView:
        return await runs_of(services).get(ctx, run_id)

    @get("/{run_id:str}/events", opt={"action": Action.RUN_READ}, operation_id="streamRunEvents",
         media_type="text/event-stream")
    async def events(self, services: ServicesDep, ctx: ContextDep, run_id: RunId,
                     after: Annotated[int, Parameter(ge=0)] = 0) -> EventStream:
        service = runs_of(services)
        first, status = await service.events(ctx, run_id, after)  # 404 before the stream starts

        async def stream() -> AsyncIterator[bytes]:
            batch, current, last = first, status, after
            while True:
                for item in batch:
                    last = item["id"]
                    yield event(item)
                if current in FINAL and not batch:
                    yield event({"type": "status", "status": current})
                    return
                await asyncio.sleep(1.0)
                batch, current = await service.events(ctx, run_id, last)

        return EventStream(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    @post("/{run_id:str}/approve", opt={"action": Action.RUN_APPROVE}, operation_id="approveRun", status_code=200)
    async def approve(self, services: ServicesDep, ctx: ContextDep, run_id: RunId, data: Approve | None = None
                      ) -> RunView:
        return await runs_of(services).approve(ctx, run_id, data.digest if data else None)

    @post("/{run_id:str}/cancel", opt={"action": Action.RUN_CANCEL}, operation_id="cancelRun", status_code=200)
    async def cancel(self, services: ServicesDep, ctx: ContextDep, run_id: RunId) -> RunView:
        return await runs_of(services).cancel(ctx, run_id)


RUN_ROUTES = [RunsController]

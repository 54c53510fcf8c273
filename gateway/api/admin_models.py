"""Registry API (DESIGN.md "Models"): read models and versions; promote, canary and roll back aliases.

Thin: the rules (four eyes, fresh MFA, gates, artifact check) live in :class:`gateway.models.service.Registry`;
the app-wide guard has already checked the route's action for the caller.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get, post, put

from gateway.api.deps import ContextDep, ServicesDep
from gateway.authz.actions import Action
from gateway.models.canary import CanaryReport, CanaryThresholds, Count, Rate, Ratio
from gateway.models.evaluations import evaluations as model_evaluations
from gateway.models.views import AliasOut, ModelOut, VersionOut

VersionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
PrincipalId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Promote(msgspec.Struct, forbid_unknown_fields=True):
    """Who approves is the authenticated caller, never a field."""

    version: VersionId


class CanaryChange(msgspec.Struct, forbid_unknown_fields=True):
    """``percent`` of the alias's requests, and/or every request of ``principals``; percent 0 and none ends it.

    With ``max_error_rate`` and/or ``max_p99_ratio`` (canary p99 / production p99) every replica ends the canary
    on its own once either is crossed over at least ``min_requests`` canary requests (``auto`` "rollback";
    "none" only reports the verdict). Promotion is never automatic.
    """

    version: VersionId | None = None
    percent: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    principals: Annotated[list[PrincipalId], msgspec.Meta(max_length=1000)] | None = None
    max_error_rate: Rate | None = None
    max_p99_ratio: Ratio | None = None
    min_requests: Count | None = None
    auto: Literal["rollback", "none"] | None = None

    def thresholds(self) -> CanaryThresholds | None:
        if self.max_error_rate is None and self.max_p99_ratio is None:
            return None
        limits = CanaryThresholds(max_error_rate=self.max_error_rate, max_p99_ratio=self.max_p99_ratio)
        if self.min_requests is not None:
            limits.min_requests = self.min_requests
        if self.auto is not None:
            limits.auto = self.auto
        return limits


class GateOverride(msgspec.Struct, forbid_unknown_fields=True):
    """Why a version that failed an evaluation gate may still be promoted (kept in the audit trail)."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class ModelList(msgspec.Struct):
    models: list[ModelOut]


class ModelController(Controller):
    path = "/admin"
    tags = ["models"]

    @get("/models", opt={"action": Action.MODEL_READ}, operation_id="listModelRegistry")
    async def list_models(self, services: ServicesDep) -> ModelList:
        return ModelList(await services.models.registry.list_models())

    @get("/models/{name:str}", opt={"action": Action.MODEL_READ}, operation_id="getModelRegistryEntry")
    async def show(self, services: ServicesDep, name: str) -> ModelOut:
        return await services.models.registry.show(name)

    @get("/models/{name:str}/evaluations", opt={"action": Action.MODEL_READ}, operation_id="getModelEvaluations")
    async def evaluations(self, services: ServicesDep, name: str) -> dict[str, Any]:
        """Each version's recorded evaluation and its continuous-evaluation history (feedback rate, re-measured
        metrics beside their reference and training-time values, drift), oldest row first."""
        return await model_evaluations(services.db, name)

    @post("/aliases/{alias:str}/promote", opt={"action": Action.MODEL_PROMOTE}, operation_id="promoteAlias",
          status_code=200)
    async def promote(self, services: ServicesDep, ctx: ContextDep, alias: str, data: Promote) -> AliasOut:
        return await services.models.registry.promote(ctx, alias, data.version)

    @put("/aliases/{alias:str}/canary", opt={"action": Action.MODEL_CANARY}, operation_id="setAliasCanary",
         status_code=200)
    async def canary(self, services: ServicesDep, ctx: ContextDep, alias: str, data: CanaryChange) -> AliasOut:
        return await services.models.registry.set_canary(ctx, alias, data.version, percent=data.percent,
                                                         principals=data.principals, thresholds=data.thresholds())

    @get("/aliases/{alias:str}/canary", opt={"action": Action.MODEL_READ}, operation_id="getAliasCanary")
    async def canary_stats(self, services: ServicesDep, alias: str) -> CanaryReport:
        """Production and canary side by side over the same window, as the replica that answers saw them."""
        return await services.models.canary_report(alias)

    @post("/aliases/{alias:str}/rollback", opt={"action": Action.MODEL_ROLLBACK}, operation_id="rollbackAlias",
          status_code=200)
    async def rollback(self, services: ServicesDep, ctx: ContextDep, alias: str) -> AliasOut:
        return await services.models.registry.rollback(ctx, alias)

    @post("/versions/{version:str}/override-gates", opt={"action": Action.MODEL_GATE_OVERRIDE},
          operation_id="overrideVersionGates", status_code=200)
    async def override_gates(self, services: ServicesDep, ctx: ContextDep, version: str,
                             data: GateOverride) -> VersionOut:
        return await services.models.registry.override_gates(ctx, version, data.reason)


MODEL_ROUTES: list[Any] = [ModelController]

"""The authenticated caller, as every later step (ABAC, limits, audit) sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

AuthMethod = Literal["api_key", "jwt", "session", "cli"]


@dataclass(frozen=True, slots=True)
class Principal:
    id: str  # stable subject id ("key:<id>", "client:<id>", "user:<id>")
    kind: Literal["app", "user"]
    name: str
    auth_method: AuthMethod
    roles: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)  # department, clearance, ...
    #: model aliases this credential is scoped to; empty = no extra restriction beyond policy
    models: tuple[str, ...] = ()
    key_id: str | None = None  # credential id, for revocation and audit
    mfa_at: datetime | None = None  # last MFA verification (people)

    def may_use_model(self, alias: str) -> bool:
        return not self.models or alias in self.models

    # ABAC subject attributes (issue 3): department and clearance come from the client/user/IdP record
    @property
    def department(self) -> str | None:
        return self.attributes.get("department")

    @property
    def clearance(self) -> str | None:
        return self.attributes.get("clearance")

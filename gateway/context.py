"""``Principal`` and ``RequestContext``: who is asking, for which request, from where -- what every service takes.

Routes build one from the authenticated connection (``gateway.api.deps``); Celery tasks and the CLI build one
for the principal they act for (``RequestContext.for_principal``), so a job's call is authorised, limited and
audited exactly as an HTTP call by the same principal would be. Services never see an ASGI connection.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
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

    # ABAC subject attributes: department and clearance come from the client/user/IdP record
    @property
    def department(self) -> str | None:
        return self.attributes.get("department")

    @property
    def clearance(self) -> str | None:
        return self.attributes.get("clearance")


Origin = Literal["http", "task", "cli"]

#: the principal of a command run by an operator on the host (``palisade ...``): trusted like the shell it runs in
CLI_PRINCIPAL = Principal(id="cli", kind="user", name="cli", auth_method="cli", roles=("admin",))


def new_request_id() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class RequestContext:
    principal: Principal
    request_id: str = field(default_factory=new_request_id)
    client_ip: str | None = None
    #: where the call came from; audit records name it so a job's calls can be told from interactive ones
    origin: Origin = "http"
    #: ABAC's r.env.network for calls without a client address (jobs run inside the perimeter on behalf of a
    #: request that was already authorised at the edge); None = classify ``client_ip``
    network: str | None = None
    #: a lower priority is shed first under load (batches, evaluation) -- see gateway.limits.shedding
    priority: Literal["interactive", "batch"] = "interactive"
    #: returns once the caller has gone (an HTTP client that disconnected); None where nobody can leave (jobs)
    gone: Callable[[], Awaitable[None]] | None = field(default=None, compare=False, repr=False)

    @property
    def actor(self) -> str:
        return self.principal.id

    @property
    def auth_method(self) -> str:
        return self.principal.auth_method

    @property
    def mfa_at(self) -> datetime | None:
        return self.principal.mfa_at

    @classmethod
    def for_principal(
        cls,
        principal: Principal,
        *,
        origin: Origin = "task",
        request_id: str | None = None,
        priority: Literal["interactive", "batch"] = "interactive",
    ) -> RequestContext:
        """A job acting for ``principal`` (a batch's owner, a dataset's requester)."""
        return cls(principal, request_id or new_request_id(), None, origin, "internal", priority)

    @classmethod
    def cli(cls, request_id: str | None = None) -> RequestContext:
        return cls(CLI_PRINCIPAL, request_id or new_request_id(), None, "cli", "internal")


@dataclass(frozen=True, slots=True)
class Anonymous:
    """A request before authentication (login steps, token endpoint): what the audit trail can say of it."""

    request_id: str
    client_ip: str | None = None

"""The policy decision point interface (implemented by the Casbin ABAC enforcer in ``enforcer.py``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.authn.principal import Principal


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    id: str = field(default_factory=lambda: "dec_" + secrets.token_hex(8))
    rule: str | None = None  # which rule matched, for audit and `policy test`; never sent to the client


class Authorizer(Protocol):
    async def decide(self, principal: Principal, action: str, resource: dict[str, Any]) -> Decision: ...

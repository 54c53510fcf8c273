"""The policy decision point interface, and the role table used until ABAC policies are loaded."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.authn.principal import Principal
from gateway.authz.actions import Action


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    id: str = field(default_factory=lambda: "dec_" + secrets.token_hex(8))
    rule: str | None = None  # which rule matched, for audit and `policy test`; never sent to the client


class Authorizer(Protocol):
    async def decide(self, principal: Principal, action: str, resource: dict[str, Any]) -> Decision: ...


#: role -> actions. Deny by default: an action missing here is refused.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "app": frozenset({Action.MODEL_INVOKE, Action.MODEL_LIST, Action.SCHEMA_READ}),
    "admin": frozenset(a.value for a in Action if a is not Action.PUBLIC),
}


class RoleAuthorizer:
    """Role table plus the credential's model scope. Replaced by the Casbin ABAC enforcer when policies exist."""

    async def decide(self, principal: Principal, action: str, resource: dict[str, Any]) -> Decision:
        for role in principal.roles:
            if action in ROLE_ACTIONS.get(role, ()):
                model = resource.get("model")
                if model is not None and not principal.may_use_model(model):
                    return Decision(False, rule="credential scope excludes model")
                return Decision(True, rule=f"role:{role}")
        return Decision(False, rule="no rule allows")

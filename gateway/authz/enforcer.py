"""The Casbin ABAC decision point: ``decide(principal, action, resource) -> Decision``.

Order of checks, each one able only to refuse:
1. the authentication-method table (API keys and app tokens never reach admin or audit actions, whatever the
   policy says);
2. the credential's own model scope (a key minted for one model stays on that model);
3. the policy (deny overrides allow), memoised by the attribute tuple and forgotten whenever the policy
   version changes. A cache miss is answered by the rule index (gateway/authz/index.py: compiled rows,
   bucketed by action and first test, the same answers as pycasbin); pycasbin itself decides only what the
   index was not built for, and stays the reference for `policy test` explanations.

An empty policy, a policy that failed to load, or an evaluation error all deny; a policy that could not be
refreshed for too long makes decisions fail closed with 503.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import casbin
from casbin.util import escape_assertion, get_eval_value, replace_eval

from gateway.authn.principal import Principal
from gateway.authz.attributes import (
    MFA_FRESH_S,
    Environment,
    Networks,
    Resource,
    Subject,
    current_env,
    environment,
    resource_of,
    subject_of,
)
from gateway.authz.decision import Decision
from gateway.authz.document import PolicyError, Rule, parse
from gateway.authz.index import PolicyIndex
from gateway.errors import ServiceUnavailable

MODEL_PATH = Path(__file__).resolve().parents[2] / "policies" / "model.conf"
DEFAULT_POLICY_PATH = MODEL_PATH.with_name("policy.csv")
CACHE_MAX = 100_000
_log = logging.getLogger("palisade.authz")

#: Which authentication method may grant which actions (action prefixes), after warehouse's table: a bearer
#: credential held by software can never reach administration, audit or self-service, even if a policy row
#: says so. People (console sessions) and the local operator CLI are limited by policy alone.
APP_GRANTS = ("inference:", "api:schema:read", "limits:usage:read", "batch:", "feedback:rating:create")
AUTH_METHOD_GRANTS: dict[str, tuple[str, ...]] = {
    "api_key": APP_GRANTS,
    "jwt": APP_GRANTS,
    "session": ("",),
    "cli": ("",),
}


def method_may_grant(principal: Principal, action: str) -> bool:
    grants = APP_GRANTS if principal.kind == "app" else AUTH_METHOD_GRANTS.get(principal.auth_method, ())
    return action.startswith(grants)


class _Enforcer(casbin.Enforcer):
    """pycasbin with compiled rule expressions kept between calls (stock pycasbin re-parses each row)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._expr_cache: dict[str, Any] = {}
        super().__init__(*args, **kw)

    def _get_expression(self, expr: str, functions: Any = None) -> Any:  # type: ignore[override]
        compiled = self._expr_cache.get(expr)
        if compiled is None:
            compiled = casbin.Enforcer._get_expression(expr, functions)
            self._expr_cache[expr] = compiled
        return compiled


def build_enforcer(rules: list[Rule], *, cached: bool = True) -> casbin.Enforcer:
    cls = _Enforcer if cached else casbin.Enforcer
    enforcer = cls(str(MODEL_PATH), enable_log=False)
    if rules:
        enforcer.add_policies([r.row() for r in rules])
    return enforcer


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A policy version parsed, built and indexed, ready to be installed."""

    version: int
    rules: list[Rule]
    enforcer: casbin.Enforcer | None
    index: PolicyIndex | None
    broken: str | None


class CasbinAuthorizer:
    def __init__(
        self, *, networks: Networks | None = None, stale_after_s: float = 30.0, mfa_fresh_s: int = MFA_FRESH_S
    ) -> None:
        self.networks = networks or Networks("127.0.0.0/8,::1/128")
        self.version = 0  # 0 = nothing loaded: everything is denied
        self.rules: list[Rule] = []
        self.broken: str | None = "no policy loaded"
        self.stale_after_s = stale_after_s
        self.mfa_fresh_s = mfa_fresh_s
        self.checked_at = time.monotonic()  # last successful version check (sync loop)
        self._enforcer: casbin.Enforcer | None = None
        self._index: PolicyIndex | None = None
        self._cache: dict[tuple, tuple[bool, str]] = {}

    # ------------------------------------------------------------------ loading
    def load(self, text: str, version: int) -> None:
        """Swap in a policy; a document that does not parse leaves the decision point denying everything."""
        self.install(self.prepare(text, version))

    @staticmethod
    def prepare(text: str, version: int) -> LoadedPolicy:
        """Parse, build and index a policy without touching the decision point: at 10,000 rows this is seconds
        of CPU, so the gateway runs it in a thread and only :meth:`install` runs on the event loop."""
        try:
            rules = parse(text)
            enforcer = build_enforcer(rules)
            index = PolicyIndex.build(enforcer, rules)
        except (PolicyError, Exception) as exc:  # a broken policy must deny, never crash the gateway
            _log.error("policy version %s could not be loaded: %s", version, exc)
            return LoadedPolicy(version, [], None, None, f"policy v{version} is broken")
        return LoadedPolicy(version, rules, enforcer, index, None if rules else "empty policy")

    def install(self, loaded: LoadedPolicy) -> None:
        """Switch to a prepared policy at once (no await in between: no decision sees half of it)."""
        self._enforcer, self._index = loaded.enforcer, loaded.index
        self.rules, self.broken = loaded.rules, loaded.broken
        self.version = loaded.version
        self._cache = {}
        self.checked_at = time.monotonic()

    def environment_of(self, client_host: str | None) -> Environment:
        return environment(self.networks.classify(client_host))

    def mark_checked(self) -> None:
        self.checked_at = time.monotonic()

    # ------------------------------------------------------------------ deciding
    async def decide(
        self, principal: Principal, action: str, resource: dict[str, Any], env: Environment | None = None
    ) -> Decision:
        if time.monotonic() - self.checked_at > self.stale_after_s:
            raise ServiceUnavailable(
                "the policy store cannot be reached; refusing until it answers", headers={"Retry-After": "5"}
            )
        return self.decide_now(principal, action, resource, env if env is not None else current_env.get())

    def decide_now(
        self,
        principal: Principal,
        action: str,
        resource: dict[str, Any],
        env: Environment | None,
        now: datetime | None = None,
    ) -> Decision:
        if not method_may_grant(principal, action):
            return Decision(False, rule=f"auth-method:{principal.auth_method} cannot grant {action}")
        model = resource.get("model")
        if model and not principal.may_use_model(str(model)):
            return Decision(False, rule="credential-scope")
        sub = subject_of(principal, now, self.mfa_fresh_s)
        obj = resource_of(resource)
        env = env or environment("unknown", now)
        key = (action, sub, obj, env)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._evaluate(sub, obj, action, env)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
        return Decision(hit[0], rule=hit[1])

    def _evaluate(self, sub: Subject, obj: Resource, action: str, env: Environment) -> tuple[bool, str]:
        if self._enforcer is None or self.broken:
            return False, self.broken or "no policy"
        if self._index is not None:
            decided = self._index.decide(sub, obj, action, env)
            if decided is not None:
                return decided
        return pycasbin_decision(self._enforcer, self.rules, sub, obj, action, env)


def pycasbin_decision(
    enforcer: casbin.Enforcer, rules: list[Rule], sub: Any, obj: Any, action: Any, env: Any
) -> tuple[bool, str]:
    """(allowed, rule) by a full pycasbin enforce: the reference the rule index must agree with."""
    try:
        allowed, explain = enforcer.enforce_ex(sub, obj, action, env)
    except Exception as exc:  # an evaluation error denies (and is logged without the request's data)
        _log.error("policy evaluation failed: %s", type(exc).__name__)
        return False, "evaluation-error"
    if not allowed:
        return False, f"deny:{explain[5]}" if explain else "no-allow-rule"
    first = next(iter(matching_rules(enforcer, rules, sub, obj, action, env, stop_at_allow=True)), None)
    return True, f"allow:{first.name}" if first else "allow"


def matching_rules(
    enforcer: casbin.Enforcer,
    rules: list[Rule],
    sub: Any,
    obj: Any,
    action: str,
    env: Any,
    *,
    stop_at_allow: bool = False,
) -> list[Rule]:
    """Every rule whose matcher holds for the request, with casbin's own expression machinery (explanations)."""
    functions = enforcer.fm.get_functions()
    matcher = enforcer.model["m"]["m"].value
    tokens = enforcer.model["p"]["p"].tokens
    names = get_eval_value(matcher)
    params_r = {"r_sub": sub, "r_obj": obj, "r_act": action, "r_env": env}
    out: list[Rule] = []
    for rule in rules:
        p_params = dict(zip(tokens, rule.row(), strict=True))
        expr = replace_eval(matcher, [escape_assertion(p_params[n]) for n in names])
        if enforcer._get_expression(expr, functions).eval({**params_r, **p_params}):
            out.append(rule)
            if stop_at_allow and rule.eft == "allow":
                break
    return out


def explain(
    text: str,
    principal: Principal,
    action: str,
    resource: dict[str, Any],
    env: Environment,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Evaluate one request against a candidate policy text: the decision and every rule that matched."""
    authorizer = CasbinAuthorizer()
    authorizer.load(text, version=-1)
    if authorizer.broken and authorizer.broken != "empty policy":
        parse(text)  # re-raise the PolicyError with its line number for the operator
    decision = authorizer.decide_now(principal, action, resource, env, now or datetime.now(UTC))
    matched: list[Rule] = []
    if authorizer._enforcer is not None and method_may_grant(principal, action):
        matched = matching_rules(
            authorizer._enforcer,
            authorizer.rules,
            subject_of(principal, now),
            resource_of(resource),
            action,
            env,
        )
    return {
        "allowed": decision.allowed,
        "rule": decision.rule,
        "matched": [{"line": r.line, "name": r.name, "effect": r.eft, "action": r.act} for r in matched],
        "subject": subject_of(principal, now)._asdict(),
        "resource": resource_of(resource)._asdict(),
        "environment": env._asdict(),
    }

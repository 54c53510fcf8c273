"""The Casbin ABAC decision point: deny overrides allow, deny by default, auth-method table, clearance and MFA,
environment, caching by attribute tuple and invalidation by version, and `policy test` explanations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.authn.principal import Principal
from gateway.authz.attributes import environment
from gateway.authz.enforcer import DEFAULT_POLICY_PATH, CasbinAuthorizer, explain
from gateway.errors import ServiceUnavailable

DEFAULT = DEFAULT_POLICY_PATH.read_text()
INTERNAL = environment("internal")
NOW = datetime.now(UTC)

APP = Principal("key:a", "app", "app-a", "api_key", roles=("app",))
APP_AS_ADMIN = Principal("key:b", "app", "app-b", "api_key", roles=("admin", "app"))
ADMIN = Principal("user:1", "user", "root", "session", roles=("admin",), mfa_at=NOW)
ENGINEER = Principal(
    "user:2",
    "user",
    "eng",
    "session",
    roles=("ml_engineer",),
    attributes={"clearance": "restricted"},
    mfa_at=NOW - timedelta(hours=1),
)
VIEWER = Principal("user:3", "user", "view", "session", roles=("viewer",), mfa_at=NOW)
INTERNAL_MODEL = {"model": "chat", "classification": "internal"}
RESTRICTED_MODEL = {"model": "secret", "classification": "restricted"}


def authorizer(text: str = DEFAULT, version: int = 1) -> CasbinAuthorizer:
    a = CasbinAuthorizer()
    a.load(text, version)
    return a


def decide(
    a: CasbinAuthorizer, p: Principal, action: str, resource: dict | None = None, env=INTERNAL
) -> tuple:
    d = a.decide_now(p, action, resource or {}, env)
    return d.allowed, d.rule


def test_default_policy_roles() -> None:
    a = authorizer()
    assert decide(a, APP, "inference:model:invoke", INTERNAL_MODEL) == (True, "allow:app-inference")
    assert decide(a, ADMIN, "admin:policy:write")[0]
    assert decide(a, VIEWER, "inference:model:list")[0]
    assert not decide(a, VIEWER, "inference:model:invoke", INTERNAL_MODEL)[0]
    assert not decide(a, VIEWER, "admin:policy:read")[0]
    assert decide(a, ENGINEER, "admin:model:read")[0]
    assert not decide(a, ENGINEER, "admin:limit:write")[0]


def test_api_keys_never_reach_admin_actions_whatever_the_policy() -> None:
    a = authorizer("p, *, True, True, True, allow, everyone-everything\n")
    for action in ("admin:policy:write", "admin:key:write", "audit:log:export", "self:account:write"):
        allowed, rule = decide(a, APP_AS_ADMIN, action)
        assert not allowed and rule.startswith("auth-method:api_key")
    assert decide(a, APP_AS_ADMIN, "inference:model:invoke", INTERNAL_MODEL)[0]


def test_deny_overrides_allow() -> None:
    text = (
        "p, inference:model:invoke, True, True, True, allow, all-invoke\n"
        "p, inference:model:invoke, \"r.sub.department == 'sales'\", True, True, deny, no-sales\n"
    )
    a = authorizer(text)
    sales = Principal("key:s", "app", "s", "api_key", roles=("app",), attributes={"department": "sales"})
    assert decide(a, APP, "inference:model:invoke", INTERNAL_MODEL) == (True, "allow:all-invoke")
    assert decide(a, sales, "inference:model:invoke", INTERNAL_MODEL) == (False, "deny:no-sales")


@pytest.mark.parametrize(
    "text", ["", "# only comments\n\n", "p, admin:*, broken((, True, True, allow, x\n", "not,a,policy"]
)
def test_empty_or_broken_policy_denies_everything(text: str) -> None:
    a = authorizer(text)
    for p, action in ((ADMIN, "admin:policy:read"), (APP, "inference:model:invoke")):
        allowed, _ = decide(a, p, action, INTERNAL_MODEL)
        assert allowed is False


def test_restricted_models_need_clearance_and_for_people_fresh_mfa() -> None:
    a = authorizer()
    cleared_app = Principal(
        "key:c", "app", "c", "api_key", roles=("app",), attributes={"clearance": "restricted"}
    )
    assert decide(a, APP, "inference:model:invoke", RESTRICTED_MODEL) == (False, "deny:above-clearance")
    assert decide(a, cleared_app, "inference:model:invoke", RESTRICTED_MODEL)[0]
    # cleared engineer, MFA an hour old: refused; with a fresh MFA: allowed
    assert decide(a, ENGINEER, "inference:model:invoke", RESTRICTED_MODEL) == (
        False,
        "deny:restricted-needs-fresh-mfa",
    )
    fresh = Principal(
        **{**{f: getattr(ENGINEER, f) for f in ENGINEER.__slots__}, "mfa_at": datetime.now(UTC)}
    )
    assert decide(a, fresh, "inference:model:invoke", RESTRICTED_MODEL)[0]
    # an unknown classification counts as the highest
    assert not decide(a, APP, "inference:model:invoke", {"model": "x", "classification": "topsecret"})[0]


def test_credential_scope_and_environment() -> None:
    a = authorizer()
    scoped = Principal("key:d", "app", "d", "api_key", roles=("app",), models=("chat",))
    assert decide(a, scoped, "inference:model:invoke", INTERNAL_MODEL)[0]
    assert decide(a, scoped, "inference:model:invoke", {"model": "other", "classification": "internal"}) == (
        False,
        "credential-scope",
    )
    assert decide(a, ADMIN, "admin:policy:write", env=environment("external")) == (
        False,
        "deny:admin-from-internal-network-only",
    )


def test_decisions_are_cached_and_forgotten_on_a_new_version() -> None:
    a = authorizer()
    assert decide(a, APP, "inference:model:invoke", INTERNAL_MODEL)[0]
    assert len(a._cache) == 1
    a.load(DEFAULT.replace("allow, app-inference", "deny, app-inference"), version=2)
    assert a._cache == {}
    assert decide(a, APP, "inference:model:invoke", INTERNAL_MODEL) == (False, "deny:app-inference")


async def test_stale_policy_fails_closed_with_503() -> None:
    a = authorizer()
    a.stale_after_s = 0.0
    with pytest.raises(ServiceUnavailable):
        await a.decide(APP, "inference:model:invoke", INTERNAL_MODEL)


def test_explain_lists_every_matching_rule() -> None:
    out = explain(DEFAULT, ENGINEER, "inference:model:invoke", RESTRICTED_MODEL, INTERNAL)
    assert out["allowed"] is False and out["rule"] == "deny:restricted-needs-fresh-mfa"
    names = {m["name"]: m["effect"] for m in out["matched"]}
    assert names == {"ml-engineer-inference": "allow", "restricted-needs-fresh-mfa": "deny"}


def test_remembered_subjects_and_environments_are_those_computed_afresh() -> None:
    from gateway.authz.attributes import _environment, _subject, subject_of

    app = Principal("key:m", "app", "m", "api_key", roles=("app",), attributes={"department": "eng"})
    assert subject_of(app) is subject_of(app)  # one principal object: computed once
    assert subject_of(app) == _subject(app, None, 300)
    # the same id in a new object (the key's attributes changed, its cache entry was re-read): its own subject
    moved = Principal("key:m", "app", "m", "api_key", roles=("app",), attributes={"department": "finance"})
    assert subject_of(moved).department == "finance" and subject_of(app).department == "eng"
    # a person's step-up ages: never remembered
    person = Principal("user:m", "user", "p", "session", roles=("viewer",), mfa_at=NOW - timedelta(seconds=299))
    assert subject_of(person, NOW).mfa_fresh and not subject_of(person, NOW + timedelta(seconds=2)).mfa_fresh
    # the hour's environment is the one computed for now (unless the hour turned between the two calls)
    before = _environment("external", datetime.now(UTC))
    assert environment("external") in (before, _environment("external", datetime.now(UTC)))

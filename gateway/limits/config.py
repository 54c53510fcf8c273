"""Which limits apply to a request: admin-set rules (database) over defaults (settings), held in memory and
refreshed by the change feed; plus the admin operations that change them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from gateway.authn.principal import Principal
from gateway.db.base import utcnow
from gateway.db.changes import bump_version
from gateway.db.policy import LimitRule, RuntimeOption, UsageBaseline
from gateway.db.session import Database
from gateway.limits import Scope
from gateway.settings import Settings

FIELDS = ("requests_per_min", "tokens_per_min", "concurrency", "daily_tokens")
SCOPE_KINDS = ("principal", "department", "model")
#: runtime options an admin may set, with their defaults
OPTIONS: dict[str, Any] = {
    "limits.fail_open": None,
    "anomaly.suspend": False,
    "anomaly.factor": 5.0,
    "anomaly.min_requests": 30,
    "anomaly.min_denials": 10,
}
PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH = 0, 1, 2


@dataclass
class LimitsSnapshot:
    rules: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    suspended: dict[str, str] = field(default_factory=dict)  # principal id -> reason
    #: scopes_for's answers under these rules, by (principal id, department, model): every request asks
    scopes: dict[tuple[str, str, str], tuple[Scope, ...]] = field(default_factory=dict, compare=False, repr=False)


class LimitsConfig:
    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        self.db = db
        self.snapshot = LimitsSnapshot()

    # ------------------------------------------------------------------ reading
    async def refresh(self) -> None:
        if self.db is None:
            return
        async with self.db.session() as s:
            rules = {
                (r.scope, r.subject): {f: getattr(r, f) for f in (*FIELDS, "priority")}
                for r in (await s.execute(select(LimitRule))).scalars()
            }
            options = {
                o.key: o.value.get("value") for o in (await s.execute(select(RuntimeOption))).scalars()
            }
            q = select(UsageBaseline.principal_id, UsageBaseline.suspended_reason).where(
                UsageBaseline.suspended_at.is_not(None)
            )
            suspended = {pid: reason or "suspended" for pid, reason in (await s.execute(q)).all()}
        self.snapshot = LimitsSnapshot(rules, options, suspended)

    def option(self, key: str) -> Any:
        value = self.snapshot.options.get(key)
        return OPTIONS.get(key) if value is None else value

    @property
    def fail_open(self) -> bool:
        value = self.option("limits.fail_open")
        return self.settings.limits_fail_open if value is None else bool(value)

    def defaults(self) -> dict[str, int]:
        s = self.settings
        return {
            "requests_per_min": s.limit_requests_per_min,
            "tokens_per_min": s.limit_tokens_per_min,
            "concurrency": s.limit_concurrency,
            "daily_tokens": s.limit_daily_tokens,
        }

    def scopes_for(self, principal: Principal, model: str) -> tuple[Scope, ...]:
        snapshot = self.snapshot
        department = str((principal.attributes or {}).get("department") or "")
        key = (principal.id, department, model)
        found = snapshot.scopes.get(key)
        if found is None:
            found = self._scopes(snapshot.rules, principal.id, department, model)
            if len(snapshot.scopes) >= 4096:  # many principals: start over rather than grow
                snapshot.scopes.clear()
            snapshot.scopes[key] = found
        return found

    def _scopes(self, rules: dict[tuple[str, str], dict[str, Any]], principal_id: str, department: str,
                model: str) -> tuple[Scope, ...]:
        own, default = rules.get(("principal", principal_id), {}), rules.get(("principal", "*"), {})
        base = self.defaults()
        values = {f: _first(own.get(f), default.get(f), base[f]) for f in FIELDS}
        scopes = [Scope("principal", principal_id, **values)]
        if department and ("department", department) in rules:
            scopes.append(Scope("department", department, **_only(rules[("department", department)])))
        if ("model", model) in rules:
            scopes.append(Scope("model", model, **_only(rules[("model", model)])))
        return tuple(s for s in scopes if any(getattr(s, f) for f in FIELDS))

    def priority_of(self, principal: Principal) -> int:
        rules = self.snapshot.rules
        for key in (("principal", principal.id), ("principal", "*")):
            value = rules.get(key, {}).get("priority")
            if value is not None:
                return int(value)
        return PRIORITY_HIGH if principal.kind == "user" else PRIORITY_NORMAL


def _first(*values: Any) -> int:
    return next(int(v) for v in values if v is not None)


def _only(rule: dict[str, Any]) -> dict[str, int]:
    return {f: int(rule.get(f) or 0) for f in FIELDS}


class LimitsAdmin:
    """Admin changes to limits, options and suspensions (API, CLI, console, the anomaly watch); each write counts
    a ``limits`` change in its own transaction (what the replicas' periodic check reads); callers audit and
    publish."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_rules(self) -> list[LimitRule]:
        async with self.db.session() as s:
            return list(
                (await s.execute(select(LimitRule).order_by(LimitRule.scope, LimitRule.subject))).scalars()
            )

    async def set_rule(
        self, scope: str, subject: str, values: dict[str, int | None], actor: str
    ) -> LimitRule:
        if scope not in SCOPE_KINDS:
            raise ValueError(f"scope must be one of {', '.join(SCOPE_KINDS)}")
        if not subject or len(subject) > 200:
            raise ValueError("subject must be 1..200 characters")
        for f, v in values.items():
            if f not in (*FIELDS, "priority"):
                raise ValueError(f"unknown limit {f!r}")
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 10**12):
                raise ValueError(f"{f} must be a whole number >= 0 (0 = unlimited) or null")
        async with self.db.session() as s:
            q = select(LimitRule).where(LimitRule.scope == scope, LimitRule.subject == subject)
            row = (await s.execute(q)).scalar_one_or_none()
            if row is None:
                row = LimitRule(scope=scope, subject=subject, updated_by=actor)
                s.add(row)
            for f, v in values.items():
                setattr(row, f, v)
            row.updated_by, row.updated_at = actor, utcnow()
            await bump_version(s, "limits")
        return row

    async def delete_rule(self, scope: str, subject: str) -> bool:
        async with self.db.session() as s:
            q = select(LimitRule).where(LimitRule.scope == scope, LimitRule.subject == subject)
            row = (await s.execute(q)).scalar_one_or_none()
            if row is None:
                return False
            await s.delete(row)
            await bump_version(s, "limits")
        return True

    async def set_option(self, key: str, value: Any, actor: str) -> None:
        if key not in OPTIONS:
            raise ValueError(f"unknown option {key!r} (known: {', '.join(OPTIONS)})")
        async with self.db.session() as s:
            row = await s.get(RuntimeOption, key)
            if row is None:
                s.add(RuntimeOption(key=key, value={"value": value}, updated_by=actor))
            else:
                row.value, row.updated_by, row.updated_at = {"value": value}, actor, utcnow()
            await bump_version(s, "limits")

    async def options(self) -> dict[str, Any]:
        async with self.db.session() as s:
            stored = {o.key: o.value.get("value") for o in (await s.execute(select(RuntimeOption))).scalars()}
        return {k: stored.get(k, d) for k, d in OPTIONS.items()}

    async def set_suspended(self, principal_id: str, reason: str | None) -> bool:
        """Suspend (reason given) or lift a suspension (reason None); False when nothing changed."""
        async with self.db.session() as s:
            row = await s.get(UsageBaseline, principal_id)
            if row is None:
                if reason is None:
                    return False
                row = UsageBaseline.fresh(principal_id)
                s.add(row)
            if (row.suspended_at is not None) == (reason is not None):
                return False
            row.suspended_at = utcnow() if reason else None
            row.suspended_reason = reason[:500] if reason else None
            await bump_version(s, "limits")
        return True

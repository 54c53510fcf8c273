"""Attribute assembly: Principal, resource and request environment -> the hashable tuples rules see.

The tuples are both what casbin evaluates (``r.sub.roles``, ``r.obj.level``, ``r.env.network``) and the
decision cache key, so each holds only what rules may reference (see gateway/authz/expressions.ATTRIBUTES).
"""

from __future__ import annotations

import ipaddress
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, NamedTuple

from gateway.authn.principal import Principal

#: classification -> level; a subject's clearance uses the same scale
LEVELS = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}
DEFAULT_CLEARANCE = "internal"
MFA_FRESH_S = 300  # SECURITY.md: step-up means an MFA check within the last 5 minutes


class Subject(NamedTuple):
    id: str
    kind: str
    roles: tuple[str, ...]
    department: str
    clearance: str
    clearance_level: int
    auth_method: str
    mfa: bool
    mfa_fresh: bool


class Resource(NamedTuple):
    model: str
    classification: str
    level: int
    owner: str
    department: str


class Environment(NamedTuple):
    hour: int
    weekday: int
    network: str
    business_hours: bool


#: the environment of the request being decided, set by the guard (contextvars follow the request's task)
current_env: ContextVar[Environment | None] = ContextVar("palisade_authz_env", default=None)


#: subjects of principals without an MFA time, by principal object: credential caches hand the same frozen object
#: to every request of a key or token, and its subject never changes (the held reference keeps its id unique)
_subjects: dict[int, tuple[Principal, Subject]] = {}
MEMO_MAX = 4096


def subject_of(p: Principal, now: datetime | None = None, fresh_s: int = MFA_FRESH_S) -> Subject:
    if p.mfa_at is not None:  # mfa_fresh depends on the time
        return _subject(p, now, fresh_s)
    hit = _subjects.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    subject = _subject(p, now, fresh_s)
    if len(_subjects) >= MEMO_MAX:  # many principals (a new object per login, per token): start over
        _subjects.clear()
    _subjects[id(p)] = (p, subject)
    return subject


def _subject(p: Principal, now: datetime | None, fresh_s: int) -> Subject:
    attrs = p.attributes or {}
    clearance = str(attrs.get("clearance") or DEFAULT_CLEARANCE)
    mfa_age = None
    if p.mfa_at is not None:
        mfa_age = ((now or datetime.now(UTC)) - p.mfa_at).total_seconds()
    return Subject(
        id=p.id,
        kind=p.kind,
        roles=tuple(str(r) for r in p.roles),
        department=str(attrs.get("department") or ""),
        clearance=clearance,
        clearance_level=LEVELS.get(clearance, -1),
        auth_method=p.auth_method,
        mfa=mfa_age is not None,
        mfa_fresh=mfa_age is not None and 0 <= mfa_age <= fresh_s,
    )


def resource_of(resource: dict[str, Any]) -> Resource:
    classification = str(resource.get("classification") or "")
    # an unknown classification is treated as the highest: a typo must not open a model
    level = LEVELS.get(classification, LEVELS["restricted"]) if classification else 0
    return Resource(
        model=str(resource.get("model") or ""),
        classification=classification,
        level=level,
        owner=str(resource.get("owner") or ""),
        department=str(resource.get("department") or ""),
    )


class Networks:
    """Which client addresses count as the ``internal`` network (``r.env.network``)."""

    #: remembered answers (parsing an address and testing every network was ~4 % of a request's CPU)
    MEMO_MAX = 4096

    def __init__(self, cidrs: str) -> None:
        self.nets = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs.split(",") if c.strip()]
        self._memo: dict[str, str] = {}

    def classify(self, host: str | None) -> str:
        if not host:
            return "unknown"
        known = self._memo.get(host)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            network = "unknown"
        else:
            network = "internal" if any(ip in n for n in self.nets) else "external"
        if len(self._memo) >= self.MEMO_MAX:  # many distinct clients: start over rather than grow
            self._memo.clear()
        self._memo[host] = network
        return network


#: the environment of the current UTC hour, by network (hour and weekday change only on the hour)
_environments: dict[tuple[str, int], Environment] = {}


def environment(network: str, now: datetime | None = None) -> Environment:
    if now is not None:
        return _environment(network, now)
    hour_index = int(time.time() // 3600)
    env = _environments.get((network, hour_index))
    if env is None:
        env = _environment(network, datetime.fromtimestamp(hour_index * 3600, UTC))
        if len(_environments) >= 64:  # past hours (networks are a handful of names)
            _environments.clear()
        _environments[(network, hour_index)] = env
    return env


def _environment(network: str, now: datetime) -> Environment:
    now = now.astimezone(UTC)
    hour, weekday = now.hour, now.weekday()
    return Environment(
        hour=hour, weekday=weekday, network=network, business_hours=weekday < 5 and 8 <= hour < 18
    )

"""Random policies and requests for comparing the rule index with pycasbin (a test and a benchmark use it).

The rules are drawn from the whole grammar policies may use, including what goes wrong in practice: results of
the wrong type (pycasbin refuses a str or int), comparisons that raise (``r.sub.roles > 3``), functions that
raise on some inputs (``ipMatch`` on a model name), literals that pycasbin's text rewriting changes (``!``,
``r.``), chained comparisons, literal collections, and first tests the index files rows under. Requests draw
from the same small vocabularies so that rows match, collide and deny often.
"""

from __future__ import annotations

import random
from enum import StrEnum

from gateway.authz.attributes import Environment, Resource, Subject
from gateway.authz.document import Rule, parse

ROLES = ("app", "admin", "viewer", "ml_engineer", "approver")
KINDS = ("app", "user")
DEPTS = ("", "sales", "dept1", "a!b", "r.sub")
MODELS = ("chat", "secret", "10.1.2.3", "")
CLASSES = ("", "public", "internal", "confidential", "restricted")
SEG1 = ("inference", "admin", "audit", "self", "team1")
SEG2 = ("model", "policy", "log", "account")
SEG3 = ("invoke", "list", "read", "write")


class Act(StrEnum):
    """Actions arrive as StrEnum members in the gateway: the index must look them up as their text."""

    INVOKE = "inference:model:invoke"
    POLICY_WRITE = "admin:policy:write"


def _action(rng: random.Random) -> str:
    n = rng.choice((1, 2, 3, 3, 3))
    return ":".join([rng.choice(SEG1), rng.choice(SEG2), rng.choice(SEG3)][:n])


def action_pattern(rng: random.Random) -> str:
    shape = rng.random()
    if shape < 0.05:
        return "*"
    if shape < 0.45:
        return _action(rng)
    parts = _action(rng).split(":")
    if shape < 0.85:
        return ":".join(parts[: rng.randint(1, len(parts))]) + ":*"
    return parts[0] + ":*:" + rng.choice(SEG3)  # a star in the middle: keyMatch ignores what follows it


#: rules that raise or give pycasbin a result of the wrong type (str, int, None): drawn less often
FAULTY = (
    "0",
    "1",
    "None",
    "'x'",
    "r.sub.roles > 3",
    "'a' < r.sub.clearance_level",
    "1 in r.sub.department",
    "ipMatch(r.obj.model, '10.0.0.0/8')",
    "r.sub.department",
    "r.sub.clearance_level",
    "r.sub.department > 3",
)


def _atom(rng: random.Random) -> str:
    if rng.random() < 0.03:
        return rng.choice(FAULTY)
    r, k, d = rng.choice(ROLES), rng.choice(KINDS), rng.choice(DEPTS)
    c, m = rng.choice(CLASSES), rng.choice(MODELS)
    return rng.choice(
        (
            "True",
            "False",
            "0.0",
            "1.5",
            f"'{r}' in r.sub.roles",
            f"'{r}' in r.sub.roles",
            f"'{r}' not in r.sub.roles",
            f"r.sub.kind == '{k}'",
            f"'{k}' == r.sub.kind",
            f"r.sub.department == '{d}'",
            f"r.sub.id == '{rng.choice(('key:a', 'user:1', 'r.sub'))}'",
            "r.obj.owner == r.sub.id",
            "r.obj.level > r.sub.clearance_level",
            f"r.sub.clearance_level >= {rng.randint(0, 3)}",
            "r.env.network != 'internal'",
            f"r.env.network == '{rng.choice(('internal', 'external', 'unknown'))}'",
            "r.env.business_hours",
            "r.sub.mfa_fresh",
            "r.sub.mfa == 1",
            "r.obj.level == 1.0",
            "r.sub.roles == 'app'",
            f"r.obj.classification == '{c}'",
            "r.obj.classification in ('internal', 'public')",
            "r.obj.classification in ['restricted']",
            "r.obj.model in {'chat', 'secret'}",
            f"r.obj.model == '{m}'",
            "r.env.hour < 12 < r.env.weekday",
            f"r.env.hour < {rng.randint(0, 23)}",
            f"{rng.randint(0, 3)} < r.obj.level",
            f"{rng.randint(0, 3)} >= r.sub.clearance_level",
            f"r.sub.clearance_level > {rng.choice((1.5, 0, 2, True))}",
            f"r.obj.level <= {rng.randint(0, 3)}",
            "r.sub.mfa > 0",
            "0 <= r.env.hour < 8",
            f"keyMatch(r.obj.model, '{rng.choice(('ch*', 'sec*', '*'))}')",
            "globMatch(r.obj.model, 's*')",
            f"r.act == '{_action(rng)}'",
            f"keyMatch(r.act, '{action_pattern(rng)}')",
            f"r.sub.auth_method == '{rng.choice(('api_key', 'session', 'jwt'))}'",
        )
    )


def rule_expr(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth >= 2 or roll < 0.5:
        return _atom(rng)
    if roll < 0.75:
        return f"{_atom(rng)} and {rule_expr(rng, depth + 1)}"
    if roll < 0.9:
        return f"({rule_expr(rng, depth + 1)}) or {_atom(rng)}"
    return f"not ({rule_expr(rng, depth + 1)})"


def _quoted(expr: str) -> str:
    return '"' + expr.replace('"', '""') + '"'


def policy_text(rng: random.Random, rows: int) -> str:
    lines = []
    for i in range(rows):
        sub = rule_expr(rng) if rng.random() < 0.8 else "True"
        obj = rule_expr(rng) if rng.random() < 0.4 else "True"
        env = rule_expr(rng) if rng.random() < 0.25 else "True"
        eft = "deny" if rng.random() < 0.3 else "allow"
        lines.append(f"p, {action_pattern(rng)}, {_quoted(sub)}, {_quoted(obj)}, {_quoted(env)}, {eft}, r{i}")
    return "\n".join(lines) + "\n"


def policy(rng: random.Random, rows: int) -> list[Rule]:
    return parse(policy_text(rng, rows))


def request(rng: random.Random) -> tuple[Subject, Resource, str, Environment]:
    roles = tuple(rng.sample(ROLES, rng.randint(0, 3)))
    if roles and rng.random() < 0.1:
        roles = roles + roles[:1]  # a repeated role
    level = rng.randint(-1, 3)
    mfa = rng.random() < 0.5
    sub = Subject(
        id=rng.choice(("key:a", "user:1", "r.sub", "chat")),
        kind=rng.choice(KINDS),
        roles=roles,
        department=rng.choice(DEPTS),
        clearance=rng.choice(CLASSES),
        clearance_level=level,
        auth_method=rng.choice(("api_key", "session", "jwt", "cli")),
        mfa=mfa,
        mfa_fresh=mfa and rng.random() < 0.5,
    )
    obj = Resource(
        model=rng.choice(MODELS),
        classification=rng.choice(CLASSES),
        level=rng.randint(0, 3),
        owner=rng.choice(("key:a", "user:1", "")),
        department=rng.choice(DEPTS),
    )
    hour, weekday = rng.randint(0, 23), rng.randint(0, 6)
    env = Environment(
        hour=hour,
        weekday=weekday,
        network=rng.choice(("internal", "external", "unknown")),
        business_hours=weekday < 5 and 8 <= hour < 18,
    )
    act: str = rng.choice(tuple(Act)) if rng.random() < 0.1 else _action(rng)
    return sub, obj, act, env

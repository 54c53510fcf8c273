"""Policy documents and the expression grammar: rules are code and are checked before they are stored."""

from __future__ import annotations

import pytest

from gateway.authz.document import PolicyError, parse
from gateway.authz.enforcer import DEFAULT_POLICY_PATH
from gateway.authz.expressions import RuleError, validate_rule


@pytest.mark.parametrize(
    "rule",
    [
        "r.sub.__class__",
        "r.sub.roles.__class__.__mro__",
        "().__class__.__bases__[0].__subclasses__()",
        "r.sub._asdict()",
        "__import__('os').system('id')",
        "open('/etc/passwd')",
        "r.sub.roles.count('admin') > 0",
        "eval('1')",
        "getattr(r.sub, 'id')",
        "[x for x in r.sub.roles]",
        "lambda: True",
        "r.sub.id[0] == 'k'",
        "r.sub.nonexistent == 1",
        "r.policy.x == 1",
        "p.sub_rule == 'x'",
        "1 + 1 == 2",
        "r.sub.kind == 'app' && True",
        "keyMatch(r.act, *r.sub.roles)",
        "regexMatch(r.act, '(a+)+$')",
    ],
)
def test_refuses_rules_outside_the_grammar(rule: str) -> None:
    with pytest.raises(RuleError):
        validate_rule(rule)


@pytest.mark.parametrize(
    "rule",
    [
        "True",
        "'admin' in r.sub.roles and r.sub.kind == 'user'",
        "r.obj.level > r.sub.clearance_level",
        "not r.sub.mfa_fresh or r.env.network in ('internal', 'vpn')",
        "keyMatch(r.act, 'admin:*') and r.obj.owner == r.sub.id",
        "r.env.hour >= 8 and r.env.hour < 18",
    ],
)
def test_accepts_rules_inside_the_grammar(rule: str) -> None:
    assert validate_rule(rule) == rule


def test_default_policy_parses() -> None:
    rules = parse(DEFAULT_POLICY_PATH.read_text())
    assert {r.eft for r in rules} == {"allow", "deny"}
    assert any(r.name == "apps-never-admin" and r.eft == "deny" for r in rules)


@pytest.mark.parametrize(
    "line, problem",
    [
        ('p, admin:*, "r.sub.__class__ == 1", True, True, allow, bad', "__class__"),
        ("p, admin:*, True, True, True, maybe, bad", "effect"),
        ("p, admin:*, True, True, allow, bad", "7 columns"),
        ("g, alice, admin", "only 'p' rows"),
        ("p, ADMIN;drop, True, True, True, allow, bad", "action pattern"),
        ("p, a:b, True, True, True, allow, same\np, a:c, True, True, True, allow, same", "used twice"),
    ],
)
def test_refuses_bad_documents_naming_the_line(line: str, problem: str) -> None:
    with pytest.raises(PolicyError, match="line") as exc:
        parse("# comment\n" + line)
    assert problem in str(exc.value)

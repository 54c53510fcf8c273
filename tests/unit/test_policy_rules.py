"""Policy documents and the expression grammar: rules are code and are checked before they are stored."""

from __future__ import annotations

import pytest

from gateway.authz.document import PolicyError, parse
from gateway.authz.enforcer import DEFAULT_POLICY_PATH
from gateway.authz.expressions import RuleError, validate_rule


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("r.sub.__class__", "attribute '__class__' is not allowed"),
        ("r.sub.roles.__class__.__mro__", "attribute '__mro__' is not allowed"),
        ("().__class__.__bases__[0].__subclasses__()",
         "call to '().__class__.__bases__[0].__subclasses__' is not allowed"),
        ("r.sub._asdict()", "call to 'r.sub._asdict' is not allowed"),
        ("__import__('os').system('id')", "call to \"__import__('os').system\" is not allowed"),
        ("open('/etc/passwd')", "call to 'open' is not allowed"),
        ("r.sub.roles.count('admin') > 0", "call to 'r.sub.roles.count' is not allowed"),
        ("eval('1')", "call to 'eval' is not allowed"),
        ("getattr(r.sub, 'id')", "call to 'getattr' is not allowed"),
        ("[x for x in r.sub.roles]", "ListComp is not allowed"),
        ("lambda: True", "Lambda is not allowed"),
        ("r.sub.id[0] == 'k'", "Subscript is not allowed"),
        ("r.sub.nonexistent == 1", "r.sub has no attribute 'nonexistent'"),
        ("r.policy.x == 1", "'r.policy.x' is not an attribute"),
        ("p.sub_rule == 'x'", "attribute access is allowed only on r.sub, r.obj, r.env and r.act"),
        ("1 + 1 == 2", "BinOp is not allowed"),
        ("r.sub.kind == 'app' && True", "use 'and' / 'or' in rules, not '&&' / '||'"),
        ("keyMatch(r.act, *r.sub.roles)", "starred arguments are not allowed"),
        ("regexMatch(r.act, '(a+)+$')", "call to 'regexMatch' is not allowed"),
    ],
)
def test_refuses_rules_outside_the_grammar_saying_why(rule: str, reason: str) -> None:
    """Each refusal names its reason: a rule refused for the wrong reason (say, a parse error on a typo in the
    test) would not show that the grammar check stops that construct."""
    with pytest.raises(RuleError) as exc:
        validate_rule(rule)
    message = str(exc.value)
    assert reason in message, message
    if "&&" not in rule:  # the operator hint stands alone
        assert f"in {rule!r}" in message, message  # the offending rule is quoted back to its author


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

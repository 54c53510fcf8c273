"""Policy rules are code: each expression is checked against an allowed grammar before it is stored or loaded.

Allowed: literals (str, int, float, bool, None, and tuples/lists/sets of them), ``and``/``or``/``not``,
comparisons (``== != < <= > >= in not in``), attribute access ``r.sub.<attr>``, ``r.obj.<attr>``,
``r.env.<attr>`` and ``r.act`` for the attribute names documented in policies/README.md, and calls to the few
matching functions in :data:`ALLOWED_FUNCTIONS`. Everything else (dunders, subscripts, lambdas, comprehensions,
arithmetic, any other call) is refused, so a stored rule can never reach Python internals.
"""

from __future__ import annotations

import ast

#: what each request part exposes to rules (kept in step with gateway/authz/attributes.py and the README)
ATTRIBUTES: dict[str, frozenset[str]] = {
    "sub": frozenset(
        {
            "id",
            "kind",
            "roles",
            "department",
            "clearance",
            "clearance_level",
            "auth_method",
            "mfa",
            "mfa_fresh",
        }
    ),
    "obj": frozenset({"model", "classification", "level", "owner", "department"}),
    "env": frozenset({"hour", "weekday", "network", "business_hours"}),
}
#: casbin's built-in matching functions that are safe on strings (no regexes: no ReDoS from a rule)
ALLOWED_FUNCTIONS = frozenset({"keyMatch", "keyMatch2", "globMatch", "ipMatch"})
MAX_RULE_LEN = 1000
MAX_NODES = 200

_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)


class RuleError(ValueError):
    """The rule is not in the allowed grammar; the message says where."""


def validate_rule(rule: str) -> str:
    """Return the rule stripped if it is in the allowed grammar; raise :class:`RuleError` otherwise."""
    text = rule.strip()
    if not text:
        raise RuleError("empty rule (write True for 'any')")
    if len(text) > MAX_RULE_LEN:
        raise RuleError(f"rule longer than {MAX_RULE_LEN} characters")
    if "&&" in text or "||" in text:
        raise RuleError("use 'and' / 'or' in rules, not '&&' / '||'")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"not a valid expression: {exc.msg}") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise RuleError(f"rule too complex ({count} nodes, at most {MAX_NODES})")
    _check(tree.body, text)
    return text


def _check(node: ast.AST, text: str) -> None:
    where = f"in {text!r}"
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, text)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.Not):
            raise RuleError(f"operator {type(node.op).__name__} is not allowed {where}")
        _check(node.operand, text)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if not isinstance(op, _COMPARE_OPS):
                raise RuleError(f"comparison {type(op).__name__} is not allowed {where}")
        _check(node.left, text)
        for c in node.comparators:
            _check(c, text)
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, str | int | float | bool | type(None)):
            raise RuleError(f"literal of type {type(node.value).__name__} is not allowed {where}")
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for elt in node.elts:
            if not isinstance(elt, ast.Constant):
                raise RuleError(f"collections may hold only literals {where}")
            _check(elt, text)
    elif isinstance(node, ast.Attribute):
        _check_attribute(node, where)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in ALLOWED_FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise RuleError(f"call to {name!r} is not allowed {where} (allowed: {sorted(ALLOWED_FUNCTIONS)})")
        if node.keywords:
            raise RuleError(f"keyword arguments are not allowed {where}")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise RuleError(f"starred arguments are not allowed {where}")
            _check(a, text)
    elif isinstance(node, ast.Name):
        raise RuleError(f"name {node.id!r} is not allowed {where}; use r.sub.*, r.obj.*, r.env.* or r.act")
    else:
        raise RuleError(f"{type(node).__name__} is not allowed {where}")


def _check_attribute(node: ast.Attribute, where: str) -> None:
    chain: list[str] = []
    cur: ast.AST = node
    while isinstance(cur, ast.Attribute):
        if cur.attr.startswith("_"):
            raise RuleError(f"attribute {cur.attr!r} is not allowed {where}")
        chain.append(cur.attr)
        cur = cur.value
    if not isinstance(cur, ast.Name) or cur.id != "r":
        raise RuleError(f"attribute access is allowed only on r.sub, r.obj, r.env and r.act {where}")
    chain.reverse()  # r.sub.roles -> ["sub", "roles"]
    if chain == ["act"]:
        return
    if len(chain) != 2 or chain[0] not in ATTRIBUTES:
        raise RuleError(f"'r.{'.'.join(chain)}' is not an attribute {where}")
    part, attr = chain
    if attr not in ATTRIBUTES[part]:
        raise RuleError(f"r.{part} has no attribute {attr!r} {where} (known: {sorted(ATTRIBUTES[part])})")

"""The policy decision without a scan: pycasbin's answer for Palisade's model, from the few rows that can matter.

pycasbin decides a request by evaluating the matcher against every row in order (at 10,000 rows, a third of a
second), so the first request of every new attribute combination stalled a worker. This module gives the same
answer as ``enforce_ex`` followed by the "first matching allow" explanation, row for row:

* **Each row is compiled once.** The text pycasbin evaluates for a row (the matcher with the row's rules
  substituted, after pycasbin's own escaping and ``&&``/``!`` rewriting) is parsed into the same tree that
  simpleeval walks. If every node in it is one whose meaning in plain Python is exactly simpleeval's (and, or,
  not, comparisons, literals and literal collections, ``r.<part>.<field>``, the matcher's functions), the tree
  becomes a Python function; otherwise the row keeps pycasbin's own evaluator, so a rule this module does not
  understand is still decided exactly, only slower.
* **Rows are indexed by what must hold first.** The matcher starts with ``keyMatch(r.act, p.act)``, which for
  a string action is "equal" or "starts with the text before the first ``*``", so rows are bucketed by exact
  action or action prefix. Inside a bucket, a row whose first test (after literal ``True``\\ s) is
  ``r.<part>.<field> == literal`` or ``literal in r.sub.roles`` is filed under that literal: when it does not
  hold, pycasbin's evaluation of the row stops right there with ``False`` and no error, so skipping the row
  changes nothing.
* **Candidates are evaluated in policy order**, so everything that depends on order stays: the first matching
  deny wins and names the decision, an evaluation error in a row before it denies with ``evaluation-error``
  (pycasbin raises there), a row's result must be a bool or a float as pycasbin demands, and an allow is
  explained by the first matching allow row.

Requests outside the shape the index was proven for (a subject, resource or environment that is not the
attribute tuple, a non-string action) return ``None`` and are decided by pycasbin. The randomised comparison in
tests/unit/test_policy_index_equivalence.py (and ``python -m bench.policy_decision --equivalence N``) checks
the claim against pycasbin itself.
"""

from __future__ import annotations

import ast
import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import casbin
import simpleeval
from casbin.util import escape_assertion, get_eval_value, replace_eval

from gateway.authz.attributes import Environment, Resource, Subject
from gateway.authz.document import Rule

_log = logging.getLogger("palisade.authz")

#: the request tuple each ``r_`` name holds, for attribute checks at compile time and type checks per request
REQUEST_TYPES: dict[str, type] = {"r_sub": Subject, "r_obj": Resource, "r_env": Environment}
REQUEST_TOKENS = ["r_sub", "r_obj", "r_act", "r_env"]
#: tuple-valued fields, where ``literal in r.<part>.<field>`` can be looked up element by element
TUPLE_FIELDS = frozenset({("r_sub", "roles")})
#: pycasbin's effect for "deny overrides allow, deny by default" (model.conf [policy_effect], escaped)
DENY_OVERRIDES = "some(where (p_eft == allow)) && !some(where (p_eft == deny))"
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_LITERAL_TYPES = (str, int, float, bool, type(None))
#: the int and bool fields of the request tuples (a number compared with one of them never raises)
_NUMERIC_FIELDS = frozenset(
    (part, name)
    for part, cls in REQUEST_TYPES.items()
    for name, kind in get_type_hints(cls).items()
    if kind in (int, bool)
)
_RANGE_AST = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_RANGE_OPS = frozenset(_RANGE_AST.values())
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
#: value types whose ``==`` agrees with their hash, so a dict lookup answers ``value == literal`` exactly
_HASH_EXACT = frozenset({str, int, float, bool, type(None), tuple})

#: the ``r_<part>.<field>`` reads simpleeval allows (no ``_``/``func_`` prefixes, no blocked method names)
_READABLE = frozenset(
    (part, name)
    for part, cls in REQUEST_TYPES.items()
    for name in cls._fields  # type: ignore[attr-defined]
    if not name.startswith(tuple(simpleeval.DISALLOW_PREFIXES)) and name not in simpleeval.DISALLOW_METHODS
)
#: a compiled row: (r_sub, r_obj, r_act, r_env) -> the matcher's value (without the action test)
RowFn = Callable[[Any, Any, Any, Any], Any]


@dataclass(slots=True)
class _Row:
    fn: RowFn
    deny: bool
    name: str


@dataclass(slots=True)
class _Bucket:
    """The rows of one action pattern: unkeyed rows, and rows filed under the literal their first test needs."""

    rows: list[int] = field(default_factory=list)
    equal: dict[tuple[str, str], dict[Any, list[int]]] = field(default_factory=dict)
    member: dict[tuple[str, str], dict[Any, list[int]]] = field(default_factory=dict)
    #: ``r.<part>.<int field> <op> <number>`` first tests: (part, field, op) -> (numbers sorted, their rows)
    ranges: dict[tuple[str, str, str], tuple[list[Any], list[int]]] = field(default_factory=dict)

    def candidates(self, params: dict[str, Any], out: list[int]) -> None:
        out.extend(self.rows)
        for (part, name, op), (limits, rows) in self.ranges.items():
            value = getattr(params[part], name)
            if type(value) not in (int, bool):  # against a number: never raises; anything else: pycasbin decides
                raise _OutOfShape
            if op == ">":  # value > limit: the limits below value
                out.extend(rows[: bisect_left(limits, value)])
            elif op == ">=":
                out.extend(rows[: bisect_right(limits, value)])
            elif op == "<":  # value < limit: the limits above value
                out.extend(rows[bisect_right(limits, value) :])
            else:  # "<="
                out.extend(rows[bisect_left(limits, value) :])
        for (part, name), table in self.equal.items():
            value = params[part] if name == "" else getattr(params[part], name)
            if type(value) not in _HASH_EXACT:
                raise _OutOfShape
            hit = table.get(value)
            if hit:
                out.extend(hit)
        for (part, name), table in self.member.items():
            values = getattr(params[part], name)
            if type(values) is not tuple:
                raise _OutOfShape
            for value in set(values):
                if type(value) not in _HASH_EXACT:
                    raise _OutOfShape
                hit = table.get(value)
                if hit:
                    out.extend(hit)


class _OutOfShape(Exception):
    """A request value whose equality this index has not been proven for (pycasbin decides it instead)."""


class Unsupported(Exception):
    """A node whose Python meaning is not exactly simpleeval's: the row keeps pycasbin's evaluator."""


class PolicyIndex:
    """Rows compiled and bucketed once per policy version; :meth:`decide` answers like pycasbin or returns None."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.exact: dict[str, _Bucket] = {}
        self.prefix: dict[str, _Bucket] = {}
        self.prefix_lengths: list[int] = []
        self.everywhere: list[int] = []  # rows without the keyMatch-first shape: candidates for every request
        self.compiled = 0  # rows turned into Python functions (the rest use pycasbin's evaluator)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: casbin.Enforcer, rules: list[Rule]) -> PolicyIndex | None:
        """Index ``rules`` under ``model``'s matcher; None when the model is not one this index answers for."""
        if model.model["e"]["e"].value != DENY_OVERRIDES or model.model["r"]["r"].tokens != REQUEST_TOKENS:
            return None
        matcher = model.model["m"]["m"].value
        p_tokens = model.model["p"]["p"].tokens
        if "p_eft" not in p_tokens or "p_name" not in p_tokens:
            return None
        functions = model.fm.get_functions()
        names = get_eval_value(matcher)
        index = cls()
        by_text: dict[str, _Parsed] = {}  # the same rule texts parse once
        templates: dict[str, Callable[..., RowFn]] = {}  # rows differing only in literals compile once
        for i, rule in enumerate(rules):
            p_params = dict(zip(p_tokens, rule.row(), strict=True))
            text = replace_eval(matcher, [escape_assertion(p_params[n]) for n in names])
            parsed = by_text.get(text)
            if parsed is None:
                parsed = by_text[text] = _parse(text, functions, templates)
            fn = parsed.fn or _fallback(parsed.evaluator, p_params)
            index.rows.append(_Row(fn, p_params["p_eft"] == "deny", rule.name))
            if not parsed.action_first:
                index.everywhere.append(i)
                continue
            index.compiled += parsed.fn is not None
            index._file(i, p_params["p_act"], parsed.key)
        index.prefix_lengths = sorted({len(p) for p in index.prefix})
        return index

    def _file(self, i: int, pattern: str, key: tuple[str, str, str, Any] | None) -> None:
        star = pattern.find("*")
        buckets = self.exact if star == -1 else self.prefix
        bucket = buckets.setdefault(pattern if star == -1 else pattern[:star], _Bucket())
        if key is None:
            bucket.rows.append(i)
        elif key[0] in _RANGE_OPS:
            op, part, name, limit = key
            limits, rows = bucket.ranges.setdefault((part, name, op), ([], []))
            at = bisect_right(limits, limit)  # sorted by limit; rows with equal limits stay in policy order
            limits.insert(at, limit)
            rows.insert(at, i)
        else:
            kind, part, name, literal = key
            table = (bucket.equal if kind == "eq" else bucket.member).setdefault((part, name), {})
            table.setdefault(literal, []).append(i)

    # ------------------------------------------------------------------ deciding
    def decide(self, sub: Any, obj: Any, act: Any, env: Any) -> tuple[bool, str] | None:
        """(allowed, rule) exactly as pycasbin plus the first-allow explanation would say; None if out of shape."""
        if type(sub) is not Subject or type(obj) is not Resource or type(env) is not Environment:
            return None
        if not isinstance(act, str):
            return None
        name = act if type(act) is str else str.__str__(act)  # a StrEnum action, as plain text for lookups
        params = {"r_sub": sub, "r_obj": obj, "r_act": name, "r_env": env}
        found: list[int] = list(self.everywhere)
        try:
            bucket = self.exact.get(name)
            if bucket is not None:
                bucket.candidates(params, found)
            for length in self.prefix_lengths:
                if length > len(name):
                    break
                bucket = self.prefix.get(name[:length])
                if bucket is not None:
                    bucket.candidates(params, found)
        except _OutOfShape:
            return None
        found.sort()
        first_allow: str | None = None
        rows = self.rows
        for i in found:
            row = rows[i]
            try:
                result = row.fn(sub, obj, act, env)
            except Exception as exc:  # pycasbin raises out of enforce: the decision point denies
                _log.error("policy evaluation failed: %s", type(exc).__name__)
                return False, "evaluation-error"
            if isinstance(result, bool):
                if not result:
                    continue
            elif isinstance(result, float):
                if result == 0:
                    continue
            else:  # pycasbin: "matcher result should be bool, int or float"
                _log.error("policy evaluation failed: %s", "RuntimeError")
                return False, "evaluation-error"
            if row.deny:
                return False, f"deny:{row.name}"
            if first_allow is None:
                first_allow = row.name
        return (True, f"allow:{first_allow}") if first_allow is not None else (False, "no-allow-rule")


# ---------------------------------------------------------------------- row shapes
@dataclass(slots=True)
class _Parsed:
    """What one matcher text becomes: pycasbin's evaluator, and (if it has the keyMatch-first shape) the
    compiled tests after keyMatch and the index key of the first one."""

    evaluator: Any
    action_first: bool
    fn: RowFn | None
    key: tuple[str, str, str, Any] | None


def _parse(text: str, functions: dict[str, Any], templates: dict[str, Callable[..., RowFn]]) -> _Parsed:
    evaluator = casbin.Enforcer._get_expression(text, functions)  # pycasbin's own rewrite and parse
    parts = _conjuncts(evaluator.ast_parsed_value)
    if not _starts_with_action_test(parts, functions):
        return _Parsed(evaluator, False, None, None)
    rest = parts[1:]
    try:
        fn: RowFn | None = _compile(rest, functions, templates)
    except Unsupported:
        fn = None  # pycasbin's evaluator stays for this row; keyMatch is re-tested there, harmlessly
    return _Parsed(evaluator, True, fn, _first_test(rest))


def _fallback(evaluator: Any, p_params: dict[str, str]) -> RowFn:
    def evaluate(sub: Any, obj: Any, act: Any, env: Any) -> Any:
        return evaluator.eval({"r_sub": sub, "r_obj": obj, "r_act": act, "r_env": env, **p_params})

    return evaluate


def _conjuncts(node: ast.expr) -> list[ast.expr]:
    """``a and (b and c)`` -> [a, b, c]: ``and`` is associative in both value and evaluation order."""
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [leaf for value in node.values for leaf in _conjuncts(value)]
    return [node]


def _starts_with_action_test(parts: list[ast.expr], functions: dict[str, Any]) -> bool:
    """Whether the matcher starts with ``keyMatch(r_act, p_act)`` (pycasbin's key_match) and more tests follow."""
    first = parts[0]
    return (
        len(parts) >= 2
        and isinstance(first, ast.Call)
        and isinstance(first.func, ast.Name)
        and functions.get(first.func.id) is casbin.util.key_match_func
        and not first.keywords
        and [type(a) for a in first.args] == [ast.Name, ast.Name]
        and [a.id for a in first.args] == ["r_act", "p_act"]  # type: ignore[attr-defined]
    )


def _first_test(rest: list[ast.expr]) -> tuple[str, str, str, Any] | None:
    """The index key of the first indexable test, skipping truthy literals and tests that cannot raise:
    ('eq'|'in', part, field, literal), or (op, part, field, number) for ``r.<part>.<field> op number`` with op one
    of < <= > >= (read as "field op number", a literal on the left flipped)."""
    for node in rest:
        if isinstance(node, ast.Constant) and isinstance(node.value, _LITERAL_TYPES) and node.value:
            continue  # `True and x` is x: a truthy literal cannot stop the row or raise
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
            return None
        key = _index_key(node)
        if key is not None:
            return key
        if not _never_raises(node):
            return None
        # ``a == b`` between request fields and literals is a bool and never raises: when a later test files the
        # row and does not hold, pycasbin's evaluation of the row is False whatever this one said, so the row may
        # be filed by that later test (``r.sub.dept == r.obj.owner_dept && r.sub.id == "u42"`` under "u42")
    return None


def _never_raises(node: ast.Compare) -> bool:
    """``x == y`` / ``x != y`` where each side is a request field or a literal (built-in values: never raises)."""
    if not isinstance(node.ops[0], ast.Eq | ast.NotEq):
        return False
    return all(
        (isinstance(side, ast.Constant) and isinstance(side.value, _LITERAL_TYPES)) or _request_field(side)
        for side in (node.left, node.comparators[0])
    )


def _index_key(node: ast.Compare) -> tuple[str, str, str, Any] | None:
    """The index key of one test, or None when it is not a test the index files rows by."""
    left, op, right = node.left, node.ops[0], node.comparators[0]
    if isinstance(op, ast.Eq):
        if isinstance(left, ast.Constant):
            left, right = right, left
        where = _request_field(left)
        if where and isinstance(right, ast.Constant) and isinstance(right.value, _LITERAL_TYPES):
            return "eq", where[0], where[1], right.value
    elif isinstance(op, ast.In) and isinstance(left, ast.Constant) and isinstance(left.value, _LITERAL_TYPES):
        where = _request_field(right)
        if where and where in TUPLE_FIELDS:
            return "in", where[0], where[1], left.value
    elif type(op) in _RANGE_AST:
        symbol = _RANGE_AST[type(op)]
        if isinstance(left, ast.Constant):
            left, right, symbol = right, left, _FLIPPED[symbol]
        where = _request_field(left)
        if where in _NUMERIC_FIELDS and isinstance(right, ast.Constant) and type(right.value) in (int, float, bool):
            return symbol, where[0], where[1], right.value
    return None


def _request_field(node: ast.expr) -> tuple[str, str] | None:
    """('r_sub', 'roles') for ``r_sub.roles``, ('r_act', '') for ``r_act``; None for anything else."""
    if isinstance(node, ast.Name) and node.id == "r_act":
        return "r_act", ""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        cls = REQUEST_TYPES.get(node.value.id)
        if cls is not None and node.attr in cls._fields:  # type: ignore[attr-defined]
            return node.value.id, node.attr
    return None


# ---------------------------------------------------------------------- compiling
def _compile(rest: list[ast.expr], functions: dict[str, Any], templates: dict[str, Callable[..., RowFn]]) -> RowFn:
    """The tests after keyMatch as one Python function, or :class:`Unsupported`.

    Literals become parameters of a template (``lambda k0, k1: lambda r_sub, ...: r_sub.department == k0``), so
    10,000 rows that differ only in their literals cost one ``compile`` and 10,000 cheap closures.
    """
    literals: list[Any] = []
    shape: list[str] = []
    body = _translate(ast.BoolOp(ast.And(), rest) if len(rest) > 1 else rest[0], functions, literals, shape)
    key = " ".join(shape)
    make = templates.get(key)
    if make is None:
        inner = ast.Lambda(_arguments(REQUEST_TOKENS), body)
        outer = ast.Lambda(_arguments([f"k{j}" for j in range(len(literals))]), inner)
        tree = ast.fix_missing_locations(ast.Expression(outer))
        scope: dict[str, Any] = {"__builtins__": {}}
        scope.update({f"fn_{name}": fn for name, fn in functions.items()})
        make = templates[key] = eval(compile(tree, "<policy rule>", "eval"), scope)  # noqa: S307 - whitelisted nodes
    return make(*literals)


def _arguments(names: list[str]) -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[ast.arg(n) for n in names], kwonlyargs=[], kw_defaults=[], defaults=[])


def _translate(node: ast.AST, functions: dict[str, Any], literals: list[Any], shape: list[str]) -> ast.expr:
    """A copy of ``node`` in which every node means in Python exactly what it means to simpleeval.

    Literals are replaced by the names ``k0, k1, ...`` (their values appended to ``literals``); ``shape``
    collects a description of everything else, the key under which the template is compiled once.
    """

    def each(nodes: Iterable[ast.AST]) -> list[ast.expr]:
        return [_translate(n, functions, literals, shape) for n in nodes]

    shape.append(type(node).__name__)
    if isinstance(node, ast.BoolOp):
        shape.append(type(node.op).__name__ + str(len(node.values)))
        return ast.BoolOp(node.op, each(node.values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ast.UnaryOp(ast.Not(), _translate(node.operand, functions, literals, shape))
    if isinstance(node, ast.Compare) and all(isinstance(op, _COMPARE_OPS) for op in node.ops):
        shape.extend(type(op).__name__ for op in node.ops)
        left = _translate(node.left, functions, literals, shape)
        return ast.Compare(left, [type(op)() for op in node.ops], each(node.comparators))
    if isinstance(node, ast.Constant) and isinstance(node.value, _LITERAL_TYPES):
        if isinstance(node.value, str) and len(node.value) > simpleeval.MAX_STRING_LENGTH:
            raise Unsupported("literal too long")
        literals.append(node.value)
        return ast.Name(f"k{len(literals) - 1}", ast.Load())
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and not any(isinstance(e, ast.Starred) for e in node.elts):
        shape.append(str(len(node.elts)))
        return type(node)(elts=each(node.elts), **({} if isinstance(node, ast.Set) else {"ctx": ast.Load()}))
    if isinstance(node, ast.Attribute):
        where = _request_field(node)
        if where is None or where not in _READABLE:
            raise Unsupported(f"attribute {node.attr}")
        shape.append(f"{where[0]}.{node.attr}")
        return ast.Attribute(ast.Name(where[0], ast.Load()), node.attr, ast.Load())
    if isinstance(node, ast.Name) and node.id in REQUEST_TOKENS:
        shape.append(node.id)
        return ast.Name(node.id, ast.Load())
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in functions
        and functions[node.func.id] not in simpleeval.DISALLOW_FUNCTIONS
        and not node.keywords
        and not any(isinstance(a, ast.Starred) for a in node.args)
    ):
        shape.append(f"{node.func.id}/{len(node.args)}")
        return ast.Call(ast.Name(f"fn_{node.func.id}", ast.Load()), each(node.args), [])
    raise Unsupported(type(node).__name__)  # p_* names included: rules never name them after validation

"""A policy document: the text of ``policy.csv`` parsed into validated rows.

Format (one rule per line, CSV with double quotes around rules that contain commas or quotes)::

    p, <action pattern>, <subject rule>, <resource rule>, <environment rule>, <allow|deny>, <rule name>

Blank lines and lines starting with ``#`` are comments. Every rule is checked by
:func:`gateway.authz.expressions.validate_rule`; the whole document is refused on the first bad line, so a
stored version is always loadable.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
from dataclasses import dataclass

from gateway.authz.expressions import RuleError, validate_rule

ACTION_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_-]*(:([a-z0-9_-]+|\*))*(:\*)?)$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
MAX_ROWS = 50_000


class PolicyError(ValueError):
    """The document cannot be used; the message names the line and the problem."""


@dataclass(frozen=True, slots=True)
class Rule:
    act: str
    sub_rule: str
    obj_rule: str
    env_rule: str
    eft: str
    name: str
    line: int = 0

    def row(self) -> list[str]:
        """The casbin policy row (model.conf: p = act, sub_rule, obj_rule, env_rule, eft, name)."""
        return [self.act, self.sub_rule, self.obj_rule, self.env_rule, self.eft, self.name]


def parse(text: str) -> list[Rule]:
    rules: list[Rule] = []
    names: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            fields = next(csv.reader(io.StringIO(line), skipinitialspace=True))
        except csv.Error as exc:
            raise PolicyError(f"line {lineno}: {exc}") from None
        fields = [f.strip() for f in fields]
        if fields[0] != "p":
            raise PolicyError(f"line {lineno}: only 'p' rows are allowed, got {fields[0]!r}")
        if len(fields) != 7:
            raise PolicyError(
                f"line {lineno}: expected 7 columns (p, action, subject rule, resource rule, "
                f"environment rule, effect, name), got {len(fields)}"
            )
        _, act, sub_rule, obj_rule, env_rule, eft, name = fields
        if not ACTION_PATTERN.match(act):
            raise PolicyError(
                f"line {lineno}: bad action pattern {act!r} (use scope:resource:action or a '*')"
            )
        if eft not in ("allow", "deny"):
            raise PolicyError(f"line {lineno}: effect must be allow or deny, got {eft!r}")
        if not NAME_PATTERN.match(name):
            raise PolicyError(f"line {lineno}: bad rule name {name!r}")
        if name in names:
            raise PolicyError(f"line {lineno}: rule name {name!r} is used twice")
        names.add(name)
        try:
            checked = [validate_rule(r) for r in (sub_rule, obj_rule, env_rule)]
        except RuleError as exc:
            raise PolicyError(f"line {lineno} ({name}): {exc}") from None
        rules.append(Rule(act, *checked, eft=eft, name=name, line=lineno))
        if len(rules) > MAX_ROWS:
            raise PolicyError(f"more than {MAX_ROWS} rules")
    return rules


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def unified_diff(old: str, new: str, old_name: str = "current", new_name: str = "candidate") -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=old_name, tofile=new_name
        )
    )

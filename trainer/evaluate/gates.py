"""Gates as data: each is checked against the candidate's metrics and recorded with its numbers.

A gate ``{"metric": "f1", "op": ">=", "threshold": 0.8}`` is absolute. With ``"relative": "ratio"`` the bound is
``production * (1 + threshold)`` (perplexity may rise at most 2 %: ``{"metric": "perplexity", "op": "<=",
"threshold": 0.02, "relative": "ratio"}``); with ``"relative": "delta"`` it is ``production + threshold`` (bias
score at most production + 0.02). A metric the candidate lacks fails its gate. A relative gate with no
production version to compare against passes and says so (a first model has nothing to regress from).
"""

from __future__ import annotations

import operator
from typing import Any

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def lookup(metrics: dict[str, Any], name: str) -> float | None:
    """``f1`` or a dotted path (``classification.f1``) into nested metrics; the first numeric match wins."""
    node: Any = metrics
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, int | float) and not isinstance(node, bool):
        return float(node)
    if "." not in name:
        for value in metrics.values():
            if isinstance(value, dict):
                found = lookup(value, name)
                if found is not None:
                    return found
    return None


def check(gates: list[dict], candidate: dict[str, Any], production: dict[str, Any] | None) -> list[dict]:
    results = []
    for gate in gates:
        metric, op, threshold = gate["metric"], gate["op"], float(gate["threshold"])
        relative = gate.get("relative")
        value = lookup(candidate, metric)
        base = lookup(production, metric) if production else None
        rec = {"name": gate.get("name") or f"{metric} {op} {threshold}{' ' + relative if relative else ''}",
               "metric": metric, "op": op, "threshold": threshold, "relative": relative, "value": value,
               "production": base}
        if value is None:
            rec.update(passed=False, reason="metric missing from the evaluation")
        elif relative and base is None:
            rec.update(passed=True, bound=None, reason="no production version to compare against")
        else:
            bound = threshold if not relative else (base * (1 + threshold) if relative == "ratio" else base + threshold)
            rec.update(bound=bound, passed=bool(OPS[op](value, bound)))
        results.append(rec)
    return results


def all_passed(results: list[dict]) -> bool:
    return all(r["passed"] for r in results)


def as_registry_gates(results: list[dict]) -> dict[str, dict]:
    """The registry's shape: gate name -> {passed, ...numbers}."""
    return {r["name"]: r for r in results}

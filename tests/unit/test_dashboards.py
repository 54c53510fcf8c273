"""The Grafana dashboards query only metrics the gateway really exports."""

from __future__ import annotations

import json
import re

from tests.support.server import ROOT


def _exported() -> set[str]:
    import gateway.api.health  # noqa: F401 - these modules register their metrics on import
    import gateway.limits.anomaly  # noqa: F401
    import gateway.limits.limiter  # noqa: F401
    import gateway.limits.shedding  # noqa: F401
    from gateway.metrics import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_every_queried_metric_exists():
    exported = _exported()
    dashboards = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["panels"]
        for panel in dash["panels"]:
            for target in panel["targets"]:
                for metric in re.findall(r"\bpalisade_[a-z_]+", target["expr"]):
                    assert metric in exported, f"{path.name}: {panel['title']}: {metric} is not exported"

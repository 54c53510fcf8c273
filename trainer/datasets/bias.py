"""Bias report: who is mentioned, and next to which occupations and sentiment words.

Term lists live in ``trainer/datasets/terms/`` (``<axis>.txt`` with ``group: term, term``; ``occupations.txt``;
``sentiment.txt``), so a reviewer can read and extend them. For every axis (gender, age, origin, religion,
disability) the report counts the records that mention each group and, within those, the records that also
mention an occupation, a positive or a negative word.

Imbalance score per axis (0 = balanced, 1 = one-sided), the larger of:
* representation: 1 - normalised entropy of the mention counts over the axis's groups;
* sentiment gap: the largest difference between groups in the share of negative among sentiment mentions
  (groups with at least ``min_group_mentions`` records).
An axis with at least ``min_axis_mentions`` mentions and a score above ``threshold`` is flagged; a flagged
report blocks approval unless the approver waives it (audited).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainer.datasets.records import Record, joined_text

TERMS_DIR = Path(__file__).parent / "terms"
AXES = ("gender", "age", "origin", "religion", "disability")
_WORD = re.compile(r"[\w-]+", re.UNICODE)


def _lines(name: str) -> list[str]:
    text = (TERMS_DIR / name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_groups(name: str) -> dict[str, frozenset[str]]:
    groups: dict[str, frozenset[str]] = {}
    for ln in _lines(name):
        group, _, terms = ln.partition(":")
        groups[group.strip()] = frozenset(t.strip().lower() for t in terms.split(",") if t.strip())
    return groups


@lru_cache(maxsize=1)
def term_lists() -> dict[str, Any]:
    return {
        "axes": {axis: load_groups(f"{axis}.txt") for axis in AXES},
        "occupations": frozenset(w.lower() for w in _lines("occupations.txt")),
        "sentiment": load_groups("sentiment.txt"),
    }


@dataclass(frozen=True)
class BiasConfig:
    threshold: float = 0.5
    min_axis_mentions: int = 10
    min_group_mentions: int = 5

    @classmethod
    def from_dict(cls, raw: dict | None) -> BiasConfig:
        return cls(**(raw or {}))


class BiasReport:
    def __init__(self, config: BiasConfig | None = None) -> None:
        self.config = config or BiasConfig()
        self.terms = term_lists()
        self.records = 0
        # axis -> group -> Counter(mentions, occupation, positive, negative)
        self.stats: dict[str, dict[str, Counter[str]]] = {
            axis: {g: Counter() for g in groups} for axis, groups in self.terms["axes"].items()
        }

    def add(self, record: Record) -> None:
        self.records += 1
        words = set(_WORD.findall(joined_text(record).lower()))
        occupation = bool(words & self.terms["occupations"])
        positive = bool(words & self.terms["sentiment"]["positive"])
        negative = bool(words & self.terms["sentiment"]["negative"])
        for axis, groups in self.terms["axes"].items():
            for group, terms in groups.items():
                if words & terms:
                    c = self.stats[axis][group]
                    c["mentions"] += 1
                    c["occupation"] += occupation
                    c["positive"] += positive
                    c["negative"] += negative

    def result(self) -> dict[str, Any]:
        cfg = self.config
        axes: dict[str, Any] = {}
        flagged = []
        for axis, groups in self.stats.items():
            mentions = {g: c["mentions"] for g, c in groups.items()}
            total = sum(mentions.values())
            representation = _representation_imbalance(list(mentions.values()))
            negative_share = {
                g: c["negative"] / (c["positive"] + c["negative"])
                for g, c in groups.items()
                if c["mentions"] >= cfg.min_group_mentions and c["positive"] + c["negative"] > 0
            }
            gap = max(negative_share.values()) - min(negative_share.values()) if len(negative_share) > 1 else 0.0
            score = round(max(representation, gap), 4)
            judged = total >= cfg.min_axis_mentions
            is_flagged = judged and score > cfg.threshold
            if is_flagged:
                flagged.append(axis)
            axes[axis] = {
                "groups": {g: dict(c) for g, c in groups.items()},
                "mentions": total,
                "representation_imbalance": round(representation, 4),
                "sentiment_gap": round(gap, 4),
                "score": score,
                "judged": judged,
                "flagged": is_flagged,
            }
        return {"records": self.records, "threshold": cfg.threshold, "axes": axes, "flagged": flagged}


def _representation_imbalance(counts: list[int]) -> float:
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return 0.0
    entropy = -sum((c / total) * math.log(c / total) for c in counts if c)
    return 1.0 - entropy / math.log(len(counts))

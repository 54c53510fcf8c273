"""Augmentation of the training split: counterfactual swaps of demographic terms (he <-> she, names, group words).

A swapped copy is added only when at least one term changed; it carries ``meta.augmented = "counterfactual"``,
``meta.synthetic = True`` and the content hash of its source, so provenance survives into the data card and
training can tell added rows from collected ones. Pairs live in ``terms/counterfactual.txt``.

Paraphrase, back-translation and synthetic examples through a served model go through the gateway's inference
service with the requester as principal; they are not part of this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

from trainer.datasets.bias import TERMS_DIR
from trainer.datasets.records import Record, content_hash, map_texts


@lru_cache(maxsize=1)
def swap_table() -> tuple[dict[str, str], re.Pattern[str]]:
    table: dict[str, str] = {}
    for ln in (TERMS_DIR / "counterfactual.txt").read_text(encoding="utf-8").splitlines():
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        a, _, b = ln.partition("=")
        a, b = a.strip().lower(), b.strip().lower()
        table.setdefault(a, b)
        table.setdefault(b, a)
    alternatives = "|".join(sorted((re.escape(w) for w in table), key=len, reverse=True))
    return table, re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def _keep_case(original: str, replacement: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def swap_text(text: str) -> tuple[str, int]:
    table, pattern = swap_table()
    count = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return _keep_case(m.group(), table[m.group().lower()])

    return pattern.sub(sub, text), count


def counterfactual(record: Record) -> Record | None:
    changed = 0

    def fn(text: str) -> str:
        nonlocal changed
        out, n = swap_text(text)
        changed += n
        return out

    swapped = map_texts(record, fn)
    if not changed:
        return None
    swapped["meta"] = {"augmented": "counterfactual", "synthetic": True,
                       "source": content_hash(record).hex()[:16], "swaps": changed}
    return swapped


def with_counterfactuals(records: Iterator[Record], stats: dict[str, int]) -> Iterator[Record]:
    for r in records:
        yield r
        extra = counterfactual(r)
        if extra is not None:
            stats["counterfactual"] = stats.get("counterfactual", 0) + 1
            yield extra

"""Augmentation of the training split: counterfactual swaps of demographic terms (he <-> she, names, group words).

A swapped copy is added only when at least one term changed; it carries ``meta.augmented = "counterfactual"``,
``meta.synthetic = True`` and the content hash of its source, so provenance survives into the data card and
training can tell added rows from collected ones. Pairs live in ``terms/counterfactual.txt``.

Paraphrases come from a served model through the gateway's one inference entry point, called by the job with
the requester as principal (``trainer.datasets.tasks`` builds the ``paraphrase`` callable), so each call is
authorised, rate-limited and audited like the requester's own; here is only what to ask and how to mark it.
The answer is scrubbed for PII again before it is stored (a model can invent an address).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
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


PARAPHRASE_PROMPT = ("Rewrite the following text so that it says the same thing in different words. Answer with the "
                     "rewritten text only.")


def paraphrased(record: Record, paraphrase: Callable[[str], str], model: str) -> Record | None:
    """A copy with the user-side text (chat: user turns; prompt/completion: the prompt; text: all) rewritten."""
    out = dict(record)
    if "messages" in record:
        out["messages"] = [{**m, "content": paraphrase(m["content"])} if m.get("role") == "user" else dict(m)
                           for m in record["messages"]]
    elif "prompt" in record:
        out["prompt"] = paraphrase(record["prompt"])
    else:
        out["text"] = paraphrase(record["text"])
    if out == record:
        return None
    out["meta"] = {"augmented": "paraphrase", "synthetic": True, "model": model,
                   "source": content_hash(record).hex()[:16]}
    return out

"""One record shape for every input format, so each stage handles text the same way.

A record is a plain dict in one of three shapes (the shapes training reads back):

* chat: ``{"messages": [{"role": "user", "content": "..."}, ...]}``
* prompt/completion: ``{"prompt": "...", "completion": "..."}``
* text: ``{"text": "..."}``

Extra keys carry provenance and tags (``meta``: source, line, augmentation); they never reach PII or filters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

Record = dict[str, Any]
KINDS = ("chat", "prompt_completion", "text")


def kind_of(record: Record) -> str:
    if "messages" in record:
        return "chat"
    if "prompt" in record:
        return "prompt_completion"
    return "text"


def texts(record: Record) -> Iterator[str]:
    """Every free-text field of the record, in a fixed order."""
    if "messages" in record:
        for m in record["messages"]:
            yield m.get("content") or ""
    elif "prompt" in record:
        yield record.get("prompt") or ""
        yield record.get("completion") or ""
    else:
        yield record.get("text") or ""


def map_texts(record: Record, fn: Callable[[str], str]) -> Record:
    """A copy of ``record`` with ``fn`` applied to every free-text field (roles and meta untouched)."""
    out = dict(record)
    if "messages" in record:
        out["messages"] = [{**m, "content": fn(m.get("content") or "")} for m in record["messages"]]
    elif "prompt" in record:
        out["prompt"] = fn(record.get("prompt") or "")
        out["completion"] = fn(record.get("completion") or "")
    else:
        out["text"] = fn(record.get("text") or "")
    return out


def joined_text(record: Record) -> str:
    """The record's text as one string (filters, dedup, language and bias look at this)."""
    return "\n".join(texts(record))


def content(record: Record) -> Record:
    """The record without provenance: what is hashed and what training reads."""
    if "messages" in record:
        return {"messages": [{"role": m.get("role", "user"), "content": m.get("content") or ""}
                             for m in record["messages"]]}
    if "prompt" in record:
        return {"prompt": record.get("prompt") or "", "completion": record.get("completion") or ""}
    return {"text": record.get("text") or ""}


def content_hash(record: Record) -> bytes:
    """sha256 of the canonical JSON of the record's content (exact dedup, split assignment)."""
    canonical = json.dumps(content(record), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()

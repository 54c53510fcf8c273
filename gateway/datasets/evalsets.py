"""Evaluation sets from a version's tags and labels: the records of one split that carry a label and/or a tag,
written as JSONL (content plus ``meta`` with tags and labels). Augmented and synthetic rows are left out unless
asked for: an evaluation set should measure on collected data.

Tags and labels are set by the pipeline (``trainer.datasets.tags``); this is the read side, in the gateway so the
CLI and the API export without importing the trainer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def matches(record: dict[str, Any], *, tag: str | None = None, label: str | None = None,
            include_synthetic: bool = False) -> bool:
    """``tag``: ``name=value`` (``topic=billing``, ``language=de``, ``source=a.txt``) or a bare value matched
    against any tag; ``label``: one label."""
    meta = record.get("meta") or {}
    if meta.get("synthetic") and not include_synthetic:
        return False
    if label is not None and label not in meta.get("labels", []):
        return False
    if tag is not None:
        tags = meta.get("tags") or {}
        name, sep, value = tag.partition("=")
        if sep:
            have = tags.get(name)
            return value in have if isinstance(have, list) else have == value
        return any(tag == v or (isinstance(v, list) and tag in v) for v in tags.values())
    return True


def write_jsonl(records: Iterable[dict[str, Any]], out: Path) -> int:
    """Write atomically (a temporary file renamed into place) and private (0600); returns the record count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count

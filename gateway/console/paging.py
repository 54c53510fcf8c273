"""Keyset pagination for console lists: each page is ``WHERE (key) < (cursor) ORDER BY key DESC LIMIT n+1``.

No OFFSET (which reads and throws away every earlier row) and no COUNT: the cost of a page is the cost of one
index range scan whatever page it is, so a list of ten million rows answers as fast on page 1000 as on page 1.
The cursor is opaque to the browser (base64 of the last row's key).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_

from gateway.db.session import Database

PAGE = 50


@dataclass
class Page:
    rows: list[Any]
    next_cursor: str | None


def encode_cursor(values: list[Any]) -> str:
    raw = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[Any] | None:
    if not cursor or len(cursor) > 512:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        return None
    return raw if isinstance(raw, list) else None


async def by_created(db: Database, model: Any, cursor: str | None, *, limit: int = PAGE,
                     where: Any = None) -> Page:
    """Newest first on (created_at, id): people, apps and keys number in the thousands at most, so the row-value
    range on created_at is enough without an index of its own."""
    q = select(model).order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    if where is not None:
        q = q.where(where)
    after = decode_cursor(cursor)
    if after and len(after) == 2:
        try:
            at = datetime.fromisoformat(str(after[0]))
        except ValueError:
            at = None
        if at is not None:
            q = q.where(tuple_(model.created_at, model.id) < tuple_(at, str(after[1])))
    async with db.session() as s:
        rows = list((await s.execute(q)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor([rows[-1].created_at, rows[-1].id]) if more and rows else None
    return Page(rows, nxt)

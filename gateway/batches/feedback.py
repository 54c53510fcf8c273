"""Feedback on answers: a rating (thumbs or 1-5), a comment and a corrected answer, per request id.

Who may rate: the principal that made the request, found through the audit trail (the request's inference record
names its actor), or whoever the policy allows on that actor's objects (``feedback:rating:create`` with
``owner`` = the actor). Request ids can be chosen by clients (``X-Request-Id``), so a rating always attaches to
the rater's own request under that id: a stranger reusing someone's id finds nothing of theirs (404).

Each (request id, principal) holds one feedback; posting again updates it (rating replaced; a comment or
correction left out keeps the earlier one). The retained prompt and answer (models
with ``retain_content``) are copied, re-encrypted, into the feedback row, so feedback outlives audit pruning and
an ML engineer can turn chosen feedback (corrections, low ratings) into a dataset (``export``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from gateway.audit.events import ACCEPTED_TAGS, AuditEvent, Tag
from gateway.authz.actions import Action
from gateway.batches.service import Access
from gateway.batches.shapes import FeedbackCreate, FeedbackObject
from gateway.batches.shapes import epoch as _epoch
from gateway.context import RequestContext
from gateway.db.audit import AuditRecord
from gateway.db.base import new_id, utcnow
from gateway.db.batches import Feedback
from gateway.errors import BadRequest, NotFound

PURPOSE = "feedback"
MAX_TEXT = 32_000
COMPLETION_WAIT_S = 5.0  # how long a rating waits for a just-answered request's completion record
THUMBS = {"up": "up", "down": "down", "thumbs_up": "up", "thumbs_down": "down", "+1": "up", "-1": "down"}


def normalise_rating(value: int | str) -> tuple[str, float]:
    """("up"|"down"|"1".."5", score in 0..1): down 0, up 1, n -> (n-1)/4."""
    if isinstance(value, bool):
        raise BadRequest("rating must be 'up', 'down' or 1..5", param="rating")
    if isinstance(value, str) and value.strip().lower() in THUMBS:
        thumb = THUMBS[value.strip().lower()]
        return thumb, 1.0 if thumb == "up" else 0.0
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadRequest("rating must be 'up', 'down' or 1..5", param="rating") from None
    if not 1 <= n <= 5 or str(n) != str(value).strip():
        raise BadRequest("rating must be 'up', 'down' or 1..5", param="rating")
    return str(n), (n - 1) / 4


def stars(rating: str) -> int:
    """A rating on the 1..5 scale (thumbs up 5, down 1), for ``--min-rating`` filters."""
    return {"up": 5, "down": 1}.get(rating) or int(rating)


class FeedbackService:
    def __init__(self, *, db: Any, keyring: Any, access: Access, audit: Any) -> None:
        self.db, self.keyring, self.access, self.audit = db, keyring, access, audit

    def _seal(self, fid: str, field: str, value: str | bytes | None) -> bytes | None:
        if value is None:
            return None
        data = value.encode() if isinstance(value, str) else value
        return self.keyring.encrypt(data, table="feedback", row=fid, field=field, purpose=PURPOSE)

    def _open(self, row: Feedback, field: str) -> str | None:
        blob = getattr(row, field)
        if blob is None:
            return None
        return self.keyring.decrypt(blob, table="feedback", row=row.id, field=field, purpose=PURPOSE).decode()

    async def _completions(self, request_id: str) -> list[AuditRecord]:
        async with self.db.session() as s:
            return list((await s.execute(
                select(AuditRecord).where(AuditRecord.request_id == request_id,
                                          AuditRecord.tag == Tag.INFERENCE).order_by(AuditRecord.seq.desc())
                .limit(20))).scalars())

    async def _answered_not_recorded(self, request_id: str) -> bool:
        """An accepted request whose completion record may still be on its way (it is appended after the answer
        left, so a rating sent at once can arrive first)."""
        async with self.db.session() as s:
            return (await s.execute(select(AuditRecord.seq).where(
                AuditRecord.request_id == request_id, AuditRecord.tag.in_(ACCEPTED_TAGS),
                AuditRecord.at >= utcnow() - timedelta(seconds=COMPLETION_WAIT_S)).limit(1))).first() is not None

    async def _request_of(self, ctx: RequestContext, request_id: str) -> AuditRecord:
        """The caller's inference record under ``request_id`` (or one the policy lets it rate); else 404."""
        rows = await self._completions(request_id)
        if not rows and await self._answered_not_recorded(request_id):
            flush = getattr(self.audit, "flush", None)
            if flush is not None:
                await flush()  # written by this process: committed once its queue drains
            deadline = time.monotonic() + COMPLETION_WAIT_S  # by another process: poll a little
            while not (rows := await self._completions(request_id)) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        own = [r for r in rows if r.actor == ctx.principal.id]
        if own:
            return own[0]
        for r in rows:
            if r.actor and await self.access.allowed(ctx, Action.FEEDBACK_CREATE, r.actor):
                return r
        raise NotFound(f"no request {request_id} that you may rate", param="request_id", code="request_not_found")

    async def submit(self, ctx: RequestContext, body: FeedbackCreate) -> FeedbackObject:
        rating, score = normalise_rating(body.rating)
        for name in ("comment", "correction"):
            value = getattr(body, name)
            if value is not None and len(value) > MAX_TEXT:
                raise BadRequest(f"{name} is longer than {MAX_TEXT} characters", param=name)
        record = await self._request_of(ctx, body.request_id)
        details = json.loads(record.details or "{}")
        content = None
        if details.get("content_enc"):  # the model retains prompts: keep them with the rating, re-sealed here
            content = await self.keyring.adecrypt(bytes.fromhex(details["content_enc"]), table="audit_records",
                                                  row=body.request_id, field="content", purpose="prompts")
        now = utcnow()
        async with self.db.session() as s:
            row = (await s.execute(select(Feedback).where(Feedback.request_id == body.request_id,
                                                          Feedback.actor == record.actor))).scalar_one_or_none()
            created = row is None
            if row is None:
                row = Feedback(id=new_id(), request_id=body.request_id, actor=record.actor or "", created_at=now,
                               model=record.target or record.model or "", updates=0,
                               model_version=details.get("model_version"))
                s.add(row)
            else:
                row.updates += 1
            row.rater, row.rating, row.score, row.updated_at = ctx.principal.id, rating, score, now
            if body.comment is not None:  # an update that leaves a field out keeps what was said before
                row.comment = self._seal(row.id, "comment", body.comment)
            if body.correction is not None:
                row.correction = self._seal(row.id, "correction", body.correction)
            if content is not None:
                row.content = self._seal(row.id, "content", content)
        await self.audit.record(AuditEvent.of(ctx, Tag.FEEDBACK_SUBMIT, target=body.request_id, decision="allow",
                                              rating=rating, model=row.model, update=not created,
                                              has_correction=body.correction is not None))
        return FeedbackObject(id=row.id, request_id=row.request_id, rating=rating, score=score, model=row.model,
                              model_version=row.model_version, created_at=_epoch(row.created_at) or 0,
                              updated_at=_epoch(now) or 0)

    async def rates(self, *, since: datetime | None = None, model: str | None = None,
                    bucket: str = "day") -> list[dict[str, Any]]:
        """Mean score and counts per model version and time bucket (day or hour), oldest first."""
        since = since or utcnow() - timedelta(days=30)
        q = select(Feedback.model, Feedback.model_version, Feedback.updated_at, Feedback.score,
                   Feedback.rating).where(Feedback.updated_at >= since)
        if model:
            q = q.where(Feedback.model == model)
        fmt = "%Y-%m-%dT%H:00Z" if bucket == "hour" else "%Y-%m-%d"
        groups: dict[tuple[str, str | None, str], list[tuple[float, str]]] = defaultdict(list)
        async with self.db.session() as s:
            for m, version, at, score, rating in (await s.execute(q)).all():
                groups[(m, version, at.strftime(fmt))].append((score, rating))
        out = []
        for (m, version, period), items in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0],
                                                                                   kv[0][1] or "")):
            out.append({"model": m, "model_version": version, "period": period, "count": len(items),
                        "mean_score": round(sum(sc for sc, _ in items) / len(items), 4),
                        "up": sum(1 for _, r in items if r == "up"), "down": sum(1 for _, r in items if r == "down")})
        return out

    async def export(self, *, actor: str, min_rating: int | None = None, max_rating: int | None = None,
                     corrections_only: bool = False, model: str | None = None) -> list[dict[str, Any]]:
        """Selected feedback as dataset records (chat or prompt/completion; the correction replaces the answer).

        Only feedback whose prompt was retained can become a record. The export itself is audited.
        """
        await self.keyring.refresh()
        q = select(Feedback).where(Feedback.content.is_not(None)).order_by(Feedback.created_at)
        if model:
            q = q.where(Feedback.model == model)
        records: list[dict[str, Any]] = []
        async with self.db.session() as s:
            rows = list((await s.execute(q)).scalars())
        for row in rows:
            n = stars(row.rating)
            if (min_rating is not None and n < min_rating) or (max_rating is not None and n > max_rating):
                continue
            correction = self._open(row, "correction")
            if corrections_only and correction is None:
                continue
            record = _record(json.loads(self._open(row, "content") or "{}"), correction)
            if record is not None:
                records.append(record)
        await self.audit.record(AuditEvent(Tag.FEEDBACK_EXPORT, actor=actor, target=model or "*", decision="allow",
                                           details={"records": len(records), "min_rating": min_rating,
                                                    "max_rating": max_rating, "corrections_only": corrections_only}))
        return records


def _record(content: dict[str, Any], correction: str | None) -> dict[str, Any] | None:
    answer = correction if correction is not None else content.get("completion")
    if answer is None:
        return None
    if content.get("messages"):
        return {"messages": [*content["messages"], {"role": "assistant", "content": answer}]}
    if content.get("prompt") is not None:
        return {"prompt": content["prompt"], "completion": answer}
    return None


def to_jsonl(records: list[dict[str, Any]]) -> Iterator[bytes]:
    for r in records:
        yield json.dumps(r, ensure_ascii=False).encode() + b"\n"

"""The canonical forms that are hashed and signed. Writer, verifier and offline export check share them.

A record's hash covers every field but ``seq`` and the previous record's hash, so the chain, not a column,
fixes each record's place: a record moved to another seq still hashes the same but its link points elsewhere
(reported as "reordered"), while an edited field changes the hash ("changed").
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
RECORD_V = "palisade-audit-v1"
CHECKPOINT_V = "palisade-audit-checkpoint-v1"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def iso(at: datetime) -> str:
    text = at.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):  # the common case (any UTC tzinfo): no conversion on the verify hot path
        return text
    if at.tzinfo is None:
        raise ValueError("naive datetime in the audit trail")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_details(details: dict[str, Any]) -> str:
    return json.dumps(
        details, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
    )


def record_hash(
    at: str,
    tag: str,
    actor: str | None,
    target: str | None,
    model: str | None,
    decision: str | None,
    request_id: str | None,
    details: str,
    prev_hash: str,
) -> str:
    payload = _dumps([RECORD_V, at, tag, actor, target, model, decision, request_id, details, prev_hash])
    return hashlib.sha256(payload.encode()).hexdigest()


def checkpoint_payload(seq: int, head_hash: str, at: str, kind: str, key_id: str) -> bytes:
    return _dumps([CHECKPOINT_V, seq, head_hash, at, kind, key_id]).encode()


def manifest_payload(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

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

import msgspec

GENESIS = "0" * 64
RECORD_V = "palisade-audit-v1"
CHECKPOINT_V = "palisade-audit-checkpoint-v1"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_details_json = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
).encode
#: msgspec writes the same bytes as the json module for text (every code point escapes alike), None, bools,
#: ints and the floats that ``repr`` writes without an exponent, and sorts keys alike; for anything else (another
#: float, a type ``default=str`` renders) the json module decides. tests/unit/test_audit_canonical.py compares the
#: two on random values. ~10x faster: two records per request, each canonicalised and hashed.
_fast = msgspec.json.Encoder(order="sorted").encode
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def iso(at: datetime) -> str:
    text = at.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):  # the common case (any UTC tzinfo): no conversion on the verify hot path
        return text
    if at.tzinfo is None:
        raise ValueError("naive datetime in the audit trail")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_details(details: dict[str, Any]) -> str:
    """Sorted keys, no spaces, text unescaped (the form old records and exports were hashed in: never changes)."""
    if _plain(details):
        return _fast(details).decode()
    return _details_json(details)


def _plain(value: Any) -> bool:
    """True when msgspec and the json module write ``value`` byte for byte alike (exact types, not subclasses)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return _INT_MIN <= value <= _INT_MAX
    if t is float:  # repr's plain notation; NaN and infinities fail both tests (the json module refuses them)
        return value == 0.0 or 1e-4 <= abs(value) < 1e16
    if t is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if t is list or t is tuple:
        return all(_plain(v) for v in value)
    return False


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
    fields = (RECORD_V, at, tag, actor, target, model, decision, request_id, details, prev_hash)
    if all(type(f) is str or f is None for f in fields):  # always, but for a tampered cell verify hands over
        return text_hash(fields)
    return hashlib.sha256(_dumps(fields).encode()).hexdigest()


def text_hash(fields: tuple[str | None, ...]) -> str:
    """:func:`record_hash` of ``(RECORD_V, at, …, prev_hash)`` whose values are all text or None (not checked:
    ``verify`` calls it for rows from typed columns, ~100k times a second)."""
    return hashlib.sha256(_fast(fields)).hexdigest()


def checkpoint_payload(seq: int, head_hash: str, at: str, kind: str, key_id: str) -> bytes:
    return _dumps([CHECKPOINT_V, seq, head_hash, at, kind, key_id]).encode()


def manifest_payload(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

"""The verify hot path's shortcuts give exactly what the canonical functions give (no database): the walk
writes ``record_hash``'s canonical JSON out inline, checked here on many values, the awkward ones included.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from gateway.audit.canonical import GENESIS, iso, record_hash
from gateway.audit.reader import TrailRows
from gateway.audit.verify import Report, _walk

_AWKWARD = ['"', "\\", "\n\r\t\b\f", "\x00\x01\x1f\x7f", "é ü ß", "\u2028\u2029", "😀", "", " ", "a\"b\\c", "{}"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice([*_AWKWARD, "x", "key:42", "chr"]) for _ in range(rng.randint(0, 4)))


def _chain(rng: random.Random, n: int, at: datetime) -> list[tuple]:
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        fields = [_text(rng), *(None if rng.random() < 0.3 else _text(rng) for _ in range(5)), _text(rng)]
        stored = record_hash(iso(at), *fields, prev)
        rows.append((seq, at, *fields, prev, stored))
        prev, at = stored, at + timedelta(microseconds=rng.randint(0, 2_000_000))
    return rows


def _walk_rows(rows: list[tuple]) -> Report:
    report = Report()
    batches = iter([rows[i:i + 7] for i in range(0, len(rows), 7)])
    trail = TrailRows(batches, iso, lambda seq: None)
    report.last_seq, _, _ = _walk(trail, {}, {}, None, report, {})
    return report


def test_the_inline_canonical_form_is_record_hash() -> None:
    """Every field with quotes, backslashes, control characters, non-ASCII, None: the walk's inline hash matches
    the writer's ``record_hash``, and a change to any one field is "changed" at that record."""
    rng = random.Random(7)
    rows = _chain(rng, 300, datetime(2026, 12, 7, 1, 32, 44, tzinfo=UTC))
    report = _walk_rows(rows)
    assert report.ok, report.problems[:3]
    assert (report.records, report.first_seq, report.last_seq) == (300, 1, 300)
    for field in range(1, 9):  # at, tag, actor, target, model, decision, request_id, details
        i = rng.randrange(len(rows))
        row = list(rows[i])
        row[field] = row[1] + timedelta(microseconds=1) if field == 1 else (row[field] or "") + "\x01"
        report = _walk_rows([*rows[:i], tuple(row), *rows[i + 1:]])
        assert [(p.kind, p.seq) for p in report.problems] == [("changed", i + 1)], field


def test_values_that_are_not_text_are_hashed_as_record_hash_does() -> None:
    """A tampered SQLite cell can hold a number or a boolean: the general encoder decides, as before."""
    at = datetime(2026, 12, 7, tzinfo=UTC)
    fields = ["t", 5, 1.5, True, None, "r", "{}"]
    stored = record_hash(iso(at), *fields, GENESIS)
    assert _walk_rows([(1, at, *fields, GENESIS, stored)]).ok
    report = _walk_rows([(1, at, *fields[:1], "5", *fields[2:], GENESIS, stored)])
    assert [p.kind for p in report.problems] == ["changed"]

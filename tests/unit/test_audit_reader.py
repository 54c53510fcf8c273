"""The verify hot path's shortcuts give exactly what the canonical functions give (no database).

``pg_iso`` turns Postgres's stored timestamptz (microseconds since 2000-01-01 UTC) into the text ``iso`` gives for
the same instant; the walk hashes rows from typed columns with ``text_hash``, without ``record_hash``'s type check.
Both are checked here on many values, the awkward ones included; tests/integration/test_audit_reader.py checks them
on a real Postgres. The read-ahead thread hands over every batch in order, raises its errors in the reader and
stops when the reader does.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Generator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.audit import verify
from gateway.audit.canonical import GENESIS, iso, record_hash
from gateway.audit.reader import TrailRows, _prefetched, pg_iso
from gateway.audit.verify import Report, _walk

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _stored(at: datetime) -> int:
    """What Postgres stores (and sends in binary) for a timestamptz."""
    return (at - PG_EPOCH) // timedelta(microseconds=1)


def _instants(rng: random.Random) -> list[datetime]:
    fixed = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # just before Postgres's epoch: negative
        PG_EPOCH,
        PG_EPOCH + timedelta(microseconds=1),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2024, 2, 29, 12, 0, 0, 0, tzinfo=UTC),  # microsecond 0: still six digits
        datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),  # not UTC
        datetime(2026, 11, 1, 1, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
        datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=UTC),  # a three-digit year: zero-padded
    ]
    lo, hi = _stored(datetime(1, 1, 2, tzinfo=UTC)), _stored(datetime(9999, 12, 30, tzinfo=UTC))
    spread = [PG_EPOCH + timedelta(microseconds=rng.randint(lo, hi)) for _ in range(2000)]
    offsets = [timezone(timedelta(minutes=rng.randint(-14 * 60, 14 * 60))) for _ in range(2000)]
    spread = [at.astimezone(tz) for at, tz in zip(spread, offsets, strict=True)]
    # a busy trail: many records in one second, then the next second (the prefix is cached per second)
    start = datetime(2026, 12, 7, 1, 32, 44, 999000, tzinfo=UTC)
    busy = [start + timedelta(microseconds=rng.randint(0, 3_000_000)) for _ in range(3000)]
    return fixed + spread + sorted(busy)


def test_pg_iso_is_iso_for_every_instant() -> None:
    to_iso = pg_iso()  # one converter for all of them, as in a walk: the per-second cache must not leak
    for at in _instants(random.Random(14)):
        assert to_iso(_stored(at)) == iso(at), at


@pytest.mark.parametrize("us", [2**63 - 1, -(2**63), _stored(datetime(9999, 12, 31, tzinfo=UTC)) + 86_400 * 10**6])
def test_pg_iso_refuses_what_no_datetime_holds(us: int) -> None:
    """±infinity and years past 9999 (Postgres allows them; the writer never writes them)."""
    with pytest.raises(ValueError, match="out of range"):
        pg_iso()(us)


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


def _walk_rows(rows: list[tuple], *, typed: bool = False) -> Report:
    report = Report()
    batches = iter([rows[i:i + 7] for i in range(0, len(rows), 7)])
    trail = TrailRows(batches, iso, lambda seq: None, typed=typed)
    report.last_seq, _, _ = _walk(trail, {}, {}, None, report, {})
    return report


@pytest.mark.parametrize("typed", [True, False], ids=["typed-columns", "untyped"])
def test_the_walks_hash_is_record_hash(typed: bool) -> None:
    """Every field with quotes, backslashes, control characters, non-ASCII, None: the walk's hash matches the
    writer's ``record_hash``, and a change to any one field is "changed" at that record."""
    rng = random.Random(7)
    rows = _chain(rng, 300, datetime(2026, 12, 7, 1, 32, 44, tzinfo=UTC))
    report = _walk_rows(rows, typed=typed)
    assert report.ok, report.problems[:3]
    assert (report.records, report.first_seq, report.last_seq) == (300, 1, 300)
    for field in range(1, 9):  # at, tag, actor, target, model, decision, request_id, details
        i = rng.randrange(len(rows))
        row = list(rows[i])
        row[field] = row[1] + timedelta(microseconds=1) if field == 1 else (row[field] or "") + "\x01"
        report = _walk_rows([*rows[:i], tuple(row), *rows[i + 1:]], typed=typed)
        assert [(p.kind, p.seq) for p in report.problems] == [("changed", i + 1)], field


@pytest.mark.parametrize(("window", "remembered"), [(100_000, True), (21, True), (8, False)])
def test_how_far_back_a_link_is_remembered(monkeypatch: pytest.MonkeyPatch, window: int, remembered: bool) -> None:
    """The walk remembers at least WINDOW records back (two generations, swapped between batches): a record that
    links to one of them is "reordered"; a link further back than that is left dangling (verify then names it
    "changed": a link to a hash no record has), so memory stays bounded on any trail."""
    monkeypatch.setattr(verify, "WINDOW", window)
    rows = _chain(random.Random(3), 40, datetime(2026, 12, 7, tzinfo=UTC))
    swapped = [*rows[:10], rows[30], *rows[11:30], rows[10], *rows[31:]]  # record 31 now links 21 records back
    swapped = [(i, *row[1:]) for i, row in enumerate(swapped, 1)]
    report = Report()
    trail = TrailRows(iter([swapped[i:i + 7] for i in range(0, 40, 7)]), iso, lambda seq: None, typed=True)
    _, dangling, _ = _walk(trail, {}, {}, None, report, {})
    far_back = ("reordered", 31, "links to record 10, not to 30")
    assert (far_back in [(p.kind, p.seq, p.detail) for p in report.problems]) is remembered, report.problems
    assert (dangling.get(rows[9][-1]) == 31) is not remembered


def test_read_ahead_hands_over_every_batch_and_stops_with_the_reader() -> None:
    produced: list[int] = []
    finished = threading.Event()

    def batches() -> Generator[list[tuple]]:
        try:
            for i in range(1000):
                produced.append(i)
                yield [(i,)]
        finally:
            finished.set()

    with _prefetched(batches()) as read:
        assert [b[0][0] for b in read] == list(range(1000))
    assert finished.is_set()

    produced.clear()
    finished.clear()
    with _prefetched(batches()) as read:
        assert next(read) == [(0,)]
    assert finished.wait(2), "the thread was left reading"
    assert len(produced) <= 5  # it read ahead by the queue's depth, not to the end


def test_read_ahead_raises_the_readers_error_in_order() -> None:
    def batches() -> Generator[list[tuple]]:
        yield [(1,)]
        yield [(2,)]
        raise RuntimeError("connection lost")

    got = []
    with _prefetched(batches()) as read, pytest.raises(RuntimeError, match="connection lost"):
        for batch in read:
            got.append(batch)
    assert got == [[(1,)], [(2,)]]


def test_values_that_are_not_text_are_hashed_as_record_hash_does() -> None:
    """A tampered SQLite cell can hold a number or a boolean: the general encoder decides, as before."""
    at = datetime(2026, 12, 7, tzinfo=UTC)
    fields = ["t", 5, 1.5, True, None, "r", "{}"]
    stored = record_hash(iso(at), *fields, GENESIS)
    assert _walk_rows([(1, at, *fields, GENESIS, stored)]).ok
    report = _walk_rows([(1, at, *fields[:1], "5", *fields[2:], GENESIS, stored)])
    assert [p.kind for p in report.problems] == ["changed"]

"""``palisade audit verify``: walk the chain and the signed checkpoints, and name every kind of tampering.

Problems are reported separately: ``changed`` (a record's content no longer matches its hash, or a record was
re-hashed so its successor's link or a signed checkpoint no longer matches), ``deleted`` (a gap in seq, or a link
to a hash no record has), ``reordered`` (records whose links point to records elsewhere in the trail),
``truncated`` (the trail ends before a signed checkpoint or the external head), ``bad-signature`` and
``unknown-key`` (checkpoints or head lines not signed by a trusted audit key, or a key in the database's key
table that is not trusted). Trusted keys are the ``--public-key`` PEMs, else the pinned keys file kept outside the
database (gateway.audit.pins); the database's own key table is never the trust anchor.

Open requests are a finding of their own, not a problem (the chain can hold and still have them): an inference
request's accepted record (``inference:request:accepted``, or ``inference:stream:start``) with no completion record
(``inference:request:complete`` / ``failed``) under its request id. Within ``in_flight_s`` of now it is in flight;
older, its completion was never written (the process ended first, or the store refused it after the answer left:
docs/security-audit-sequencing.md).

Reads stream in seq order, in batches of plain tuples (gateway.audit.reader: the raw driver on Postgres, read ahead
by a thread); per record it costs one canonical encoding, one SHA-256 and a few dict look-ups (~100k records/s on
the 2-core development VM at half speed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import create_engine, select

from gateway.audit.canonical import GENESIS, RECORD_V, checkpoint_payload, iso, record_hash
from gateway.audit.canonical import text_hash as canonical_text_hash
from gateway.audit.events import ACCEPTED_TAGS, COMPLETION_TAGS
from gateway.audit.reader import TrailRows, trail_rows
from gateway.audit.signing import check_signature, key_id_of, load_public_pem
from gateway.db.audit import AuditCheckpoint, AuditRecord, AuditSigningKey

KINDS = ("changed", "deleted", "reordered", "truncated", "bad-signature", "unknown-key")
WINDOW = 100_000  # how far apart two swapped records may be and still be named "reordered"
IN_FLIGHT_S = 60.0  # an accepted request younger than this with no completion yet is in flight, not open
_R = AuditRecord.__table__.c


@dataclass
class Problem:
    kind: str
    seq: int | None
    detail: str

    def __str__(self) -> str:
        where = f" at seq {self.seq}" if self.seq is not None else ""
        return f"{self.kind}{where}: {self.detail}"


@dataclass
class OpenRequest:
    """An accepted inference request with no completion record."""

    request_id: str
    seq: int
    at: datetime
    actor: str | None
    model: str | None
    in_flight: bool

    @property
    def state(self) -> str:
        return "in flight" if self.in_flight else (
            "open: no completion recorded (process ended before it was written)")

    def __str__(self) -> str:
        who = f" by {self.actor}" if self.actor else ""
        return f"request {self.request_id} (seq {self.seq}, accepted {iso(self.at)}{who}, model {self.model}): " \
               f"{self.state}"


@dataclass
class Report:
    records: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: accepted inference requests without a completion record (not problems: ``ok`` does not look at them)
    open_requests: list[OpenRequest] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        return sum(1 for r in self.open_requests if r.in_flight)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, seq: int | None, detail: str) -> None:
        self.problems.append(Problem(kind, seq, detail))

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}


def _sync_url(url: str) -> str:
    return url.replace("sqlite+aiosqlite://", "sqlite://")


def load_keys(
    engine,  # noqa: ANN001
    report: Report,
    pinned: list[str] | None = None,
    keys_file: Path | None = None,
) -> dict[str, Ed25519PublicKey]:
    """The keys checkpoints must be signed by: the given PEMs, else the pinned keys file, NEVER the database's
    own key table (whoever writes the database could add a key there). A key the database lists that is not
    trusted is itself a problem ("unknown-key"): only a forger or a lost pin puts one there."""
    from gateway.audit.pins import read_pins

    if pinned:
        keys = {key_id_of(k): k for k in (load_public_pem(p) for p in pinned)}
        source = "the --public-key files"
    else:
        pins = read_pins(keys_file) if keys_file is not None else None
        if pins is None or not pins.exists:
            report.notes.append(
                f"no pinned audit keys file at {keys_file}; give --public-key to check signatures"
            )
            keys = {}
        else:
            keys = pins.keys
            for n, why in pins.bad_lines:
                report.add("unknown-key", None, f"pinned keys file line {n} is {why}")
        source = f"the pinned keys file {keys_file}"
    with engine.connect() as conn:
        listed = conn.execute(select(AuditSigningKey.key_id)).scalars().all()
    for kid in sorted(set(listed) - set(keys)):
        report.add("unknown-key", None, f"signing key {kid} in the database is not in {source}")
    return keys


def verify_trail(
    database_url: str,
    *,
    head_file: Path | None = None,
    keys_file: Path | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    public_keys: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    in_flight_s: float = IN_FLIGHT_S,
) -> Report:
    engine = create_engine(_sync_url(database_url))
    try:
        report = Report()
        keys = load_keys(engine, report, public_keys, keys_file)
        accepted: _Accepted = {}
        _verify(engine, keys, head_file, from_seq, to_seq, progress, report, accepted)
        _open_requests(engine, accepted, to_seq, in_flight_s, report)
        return report
    finally:
        engine.dispose()


def _verify(engine, keys, head_file, from_seq, to_seq, progress, report, accepted) -> Report:  # noqa: ANN001
    with engine.connect() as conn:
        cps = conn.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq, AuditCheckpoint.id)).all()
    # checkpoints: signatures first; only valid ones vouch for records
    vouched: dict[int, list[tuple[str, str]]] = {}  # seq -> [(head_hash, where)]
    anchors: dict[int, str] = {}
    for cp in cps:
        payload = checkpoint_payload(cp.seq, cp.head_hash, iso(cp.at), cp.kind, cp.key_id)
        bad = check_signature(keys, cp.key_id, payload, cp.signature)
        if bad:
            report.add(bad, cp.seq, f"checkpoint #{cp.id} ({cp.kind}) signed by {cp.key_id}")
            continue
        report.checkpoints += 1
        vouched.setdefault(cp.seq, []).append((cp.head_hash, f"checkpoint #{cp.id}"))
        if cp.kind == "anchor":
            anchors[cp.seq] = cp.head_hash
    external = _external_head(head_file, keys, report)
    if external is not None:
        vouched.setdefault(external[0], []).append((external[1], "external head"))

    with trail_rows(engine, from_seq, to_seq) as rows:
        prev_seq, dangling, vouch_dangling = _walk(rows, vouched, anchors, progress, report, accepted)
    report.last_seq = prev_seq
    for seq, _link in sorted((seq, link) for link, seq in dangling.items()):
        # contiguous seq but a link to a hash no record has: the predecessor was rewritten and re-hashed
        report.add(
            "changed", seq - 1, f"record {seq} links to a hash no record has (record {seq - 1} rewritten)"
        )
    for seq, where in vouch_dangling.values():
        report.add("changed", seq, f"hash differs from the one signed in the {where}")
    if to_seq is None:
        last = prev_seq or 0
        for seq, entries in vouched.items():
            if seq > last:
                for _expected, where in entries:
                    report.add(
                        "truncated", seq, f"the trail ends at {last} but the {where} vouches for {seq}"
                    )
    return report


#: request id -> [(seq, at as ISO text, actor, target: the model alias the request named)], oldest first
_Accepted = dict[str, list[tuple[int, str, str | None, str | None]]]


def _walk(  # noqa: C901
    rows: TrailRows,
    vouched: dict[int, list[tuple[str, str]]],
    anchors: dict[int, str],
    progress: Callable[[int], None] | None,
    report: Report,
    accepted: _Accepted,
) -> tuple[int | None, dict[str, int], dict[str, tuple[int, str]]]:
    """The chain walk, once per record: the hash, the link, the signed heads at this seq, the pairing.

    The hot loop. Rows whose columns are typed (Postgres: every value is text or NULL) are hashed by
    :data:`gateway.audit.canonical.text_hash`, the form :func:`record_hash` gives text, without its type check;
    rows from an untyped store go through :func:`record_hash` itself (a tampered SQLite cell may hold a number).
    Everything looked up only when something is wrong is behind a cheap test. Returns the last seq read, the links
    to hashes not seen, and the signed hashes not found at their seq."""
    to_iso = rows.iso
    text_hash = canonical_text_hash if rows.typed else None
    accepted_tags, completion_tags = ACCEPTED_TAGS, COMPLETION_TAGS
    prev_seq: int | None = None
    expect: int | None = None  # prev_seq + 1
    prev_stored: str | None = ""
    # stored hash -> seq for the last WINDOW to 2 * WINDOW records, in two generations (cheaper than evicting one
    # entry per record): a link to a record that far back is named "reordered" rather than "deleted"
    recent: dict[str, int] = {}
    older: dict[str, int] = {}
    dangling: dict[str, int] = {}  # a link to a hash not seen yet -> seq of the linking record
    vouch_dangling: dict[str, tuple[int, str]] = {}  # signed hash not found at its seq -> (seq, where)
    for batch in rows.batches:
        for seq, at, tag, actor, target, model, decision, rid, details, prev_hash, stored in batch:
            if seq != expect:
                if prev_seq is None:
                    report.first_seq = seq
                    prev_stored = _start_link(rows, seq, anchors, report)
                else:
                    missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
                    report.add("deleted", prev_seq + 1, f"record(s) {missing} missing")
                    prev_stored = prev_hash  # the gap is named; do not also report the broken link
            at = to_iso(at)
            if text_hash is not None:
                digest = text_hash((RECORD_V, at, tag, actor, target, model, decision, rid, details, prev_hash))
            else:
                digest = record_hash(at, tag, actor, target, model, decision, rid, details, prev_hash)
            if digest != stored:
                report.add("changed", seq, "content does not match the record's hash")
            if prev_hash != prev_stored and prev_stored is not None:
                earlier = recent.get(prev_hash) or older.get(prev_hash)
                if earlier is not None:
                    report.add("reordered", seq, f"links to record {earlier}, not to {seq - 1}")
                else:
                    dangling[prev_hash] = seq
            if dangling and stored in dangling:
                report.add("reordered", seq, f"record {dangling.pop(stored)} links to it out of order")
            if seq in vouched:
                for expected, where in vouched[seq]:
                    if expected == stored:
                        continue
                    earlier = recent.get(expected) or older.get(expected)
                    if earlier is not None:
                        report.add("reordered", seq, f"the {where} signed record {earlier}'s hash here")
                    else:
                        vouch_dangling[expected] = (seq, where)
            if vouch_dangling and stored in vouch_dangling:
                report.add(
                    "reordered", seq, f"the {vouch_dangling.pop(stored)[1]} signed this record elsewhere"
                )
            if tag in accepted_tags and rid is not None:
                waiting = accepted.get(rid)
                if waiting is None:
                    accepted[rid] = [(seq, at, actor, target)]
                else:
                    waiting.append((seq, at, actor, target))
            elif tag in completion_tags and rid in accepted:  # pairs with the oldest accepted record of its id
                waiting = accepted[rid]
                if len(waiting) == 1:
                    del accepted[rid]
                else:
                    waiting.pop(0)
            recent[stored] = seq
            prev_seq, prev_stored = seq, stored
            expect = seq + 1
        if len(recent) >= WINDOW:
            older, recent = recent, {}
        report.records += len(batch)
        if progress is not None:
            progress(len(batch))
    return prev_seq, dangling, vouch_dangling


def _open_requests(engine, accepted, to_seq, in_flight_s, report: Report) -> None:  # noqa: ANN001
    """What is left unpaired after the walk; with ``to_seq``, a completion after the range still pairs."""
    if accepted and to_seq is not None:
        rids = list(accepted)
        with engine.connect() as conn:
            for i in range(0, len(rids), 500):
                rows = conn.execute(
                    select(_R.request_id).where(_R.seq > to_seq, _R.tag.in_(COMPLETION_TAGS),
                                                _R.request_id.in_(rids[i:i + 500])).order_by(_R.seq)
                )
                for (rid,) in rows:
                    waiting = accepted.get(rid)
                    if waiting:
                        waiting.pop(0)
    now = datetime.now(UTC)
    for rid, waiting in accepted.items():
        for seq, at_iso, actor, model in waiting:
            at = datetime.fromisoformat(at_iso)  # the canonical text kept by the walk: always UTC
            report.open_requests.append(
                OpenRequest(rid, seq, at, actor, model, (now - at).total_seconds() <= in_flight_s)
            )
    report.open_requests.sort(key=lambda r: r.seq)


def _start_link(rows: TrailRows, seq: int, anchors: dict[int, str], report: Report) -> str | None:
    """The hash the first record read must link to."""
    before = rows.hash_at(seq - 1)
    if before is not None:
        return before  # a range check starting mid-trail trusts its predecessor
    if seq - 1 in anchors:
        return anchors[seq - 1]
    if seq == 1:
        return GENESIS
    report.add("deleted", 1, f"record(s) 1..{seq - 1} missing and no signed pruning anchor at {seq - 1}")
    return None


def _external_head(path: Path | None, keys, report: Report) -> tuple[int, str] | None:  # noqa: ANN001
    if path is None or not path.exists():
        report.notes.append(
            f"no external head file at {path}; a truncated tail is checked against checkpoints only"
        )
        return None
    last = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            payload = checkpoint_payload(
                line["seq"], line["head_hash"], line["at"], line["kind"], line["key_id"]
            )
        except (ValueError, KeyError, TypeError):
            report.add("bad-signature", None, f"external head line {n} is malformed")
            continue
        bad = check_signature(keys, line["key_id"], payload, line.get("signature", ""))
        if bad:
            report.add(bad, line["seq"], f"external head line {n} signed by {line['key_id']}")
            continue
        if line["kind"] != "anchor" and (last is None or line["seq"] >= last[0]):
            last = (line["seq"], line["head_hash"])
    return last

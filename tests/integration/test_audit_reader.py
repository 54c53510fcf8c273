"""``verify`` on Postgres reads through the raw driver (binary rows, ``at`` as the stored integer); every other
database through SQLAlchemy. On a real Postgres the two give the same report, finding for finding, on an
untouched trail, on awkward text, and after each kind of tampering, for the whole trail and for a range.
"""

from __future__ import annotations

import asyncio
import base64
import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.types.numeric import Int8BinaryLoader

from gateway.audit import reader
from gateway.audit.canonical import checkpoint_payload, iso
from gateway.audit.chain import AuditChain, head_file_of
from gateway.audit.events import AuditEvent, Tag
from gateway.audit.pins import keys_file_of
from gateway.audit.verify import Report, verify_trail
from gateway.crypto import open_keyring
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings

pytestmark = pytest.mark.postgres
AWKWARD = ['say "hi"', "back\\slash", "line\nbreak\ttab\r", "\x01\x1f\x7f", "é ü 😀 \u2028", ""]


@pytest.fixture(scope="module")
def settings(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("audit-reader")
    settings = Settings(data_dir=data, database_url=pg_url.replace("postgresql://", "postgresql+psycopg://"),
                        audit_checkpoint_every=10, audit_checkpoint_interval_s=3600)
    upgrade(settings)
    old = datetime.now(UTC) - timedelta(minutes=10)

    async def fill() -> None:
        db = Database(settings)
        chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
        try:
            for i in range(30):  # accepted + completion pairs; every 7th request never completes
                rid = f"r{i}"
                await chain.record(AuditEvent(Tag.INFERENCE_ACCEPTED, actor=f"key:{i % 3}", target="tiny",
                                              request_id=rid, at=old + timedelta(seconds=i, microseconds=i * 7)))
                if i % 7:
                    await chain.record(AuditEvent(Tag.INFERENCE, actor=f"key:{i % 3}", target="tiny",
                                                  decision="allow", request_id=rid, details={"tokens": i}))
            for i, text in enumerate(AWKWARD):  # hashed by the writer, re-hashed inline by the walk
                await chain.record(AuditEvent(Tag.INFERENCE_ACCEPTED, actor=text or None, target=text,
                                              request_id=f"odd{i}", details={"note": text, text: [text]}))
        finally:
            await chain.close()
            await db.close()

    asyncio.run(fill())
    return settings


def _summary(report: Report) -> tuple:
    return (report.records, report.checkpoints, report.first_seq, report.last_seq,
            [str(p) for p in report.problems], report.notes,
            [(r.request_id, r.seq, iso(r.at), r.actor, r.model, r.in_flight) for r in report.open_requests])


def _both(settings: Settings, monkeypatch: pytest.MonkeyPatch, **kw) -> Report:  # noqa: ANN003
    """verify through the raw-driver path and through the generic path; assert the same report; return it."""
    used = []
    postgres = reader._postgres

    def spy(*args):  # noqa: ANN002, ANN202
        used.append(True)
        return postgres(*args)

    def run() -> Report:
        return verify_trail(settings.database_url, head_file=head_file_of(settings),
                            keys_file=keys_file_of(settings), **kw)

    with monkeypatch.context() as m:
        m.setattr(reader, "_postgres", spy)
        fast = run()
    assert used, "Postgres through psycopg takes the raw-driver path"
    with monkeypatch.context() as m:
        m.setattr(reader, "_postgres", reader._generic)
        generic = run()
    assert _summary(fast) == _summary(generic)
    return fast


def _tamper(settings: Settings, *statements: str) -> None:
    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET session_replication_role = replica")  # a superuser bypassing the append-only trigger
        for sql in statements:
            c.execute(sql)


def test_stored_times_convert_to_iso_text_on_postgres(pg_url: str) -> None:
    """The integer Postgres sends for a timestamptz, through ``pg_iso``, is ``iso`` of the datetime psycopg
    loads for it, whatever the session's time zone: extremes, microsecond 0, before 2000, random instants."""
    rng = random.Random(14)
    extremes = ["0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"]
    literals = ["1999-12-31 23:59:59.999999+00", "2000-01-01 00:00:00+00", "1970-01-01 00:00:00.000001+00",
                "2026-03-29 02:30:00+05:30", "2026-11-01 01:30:00.5-03:30", "0999-05-06 07:08:09.00001+00"]
    base = datetime(2000, 1, 1, tzinfo=UTC)
    literals += [(base + timedelta(microseconds=rng.randint(-(2**55), 2**55))).isoformat() for _ in range(3000)]
    query = "SELECT s::timestamptz FROM unnest(%s::text[]) WITH ORDINALITY AS t(s, n) ORDER BY n"
    with psycopg.connect(pg_url) as c:
        for zone in ("UTC", "America/St_Johns", "Asia/Kathmandu"):
            c.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
            # the extremes fit a datetime only in UTC: psycopg refuses them in other zones
            texts = extremes + literals if zone == "UTC" else literals
            cur = c.cursor(binary=True)
            cur.adapters.register_loader("timestamptz", Int8BinaryLoader)
            stored = [r[0] for r in cur.execute(query, (texts,))]
            loaded = [r[0] for r in c.execute(query, (texts,))]
            to_iso = reader.pg_iso()
            assert [to_iso(us) for us in stored] == [iso(at) for at in loaded], zone
        cur = c.cursor(binary=True)
        cur.adapters.register_loader("timestamptz", Int8BinaryLoader)
        for special in ("infinity", "-infinity", "20000-01-01 00:00:00+00"):
            (us,) = cur.execute("SELECT %s::timestamptz", (special,)).fetchone()
            with pytest.raises(ValueError, match="out of range"):
                reader.pg_iso()(us)


def test_both_paths_give_the_same_report_through_tampering(settings: Settings, monkeypatch) -> None:  # noqa: ANN001
    total = 30 + 30 - 5 + len(AWKWARD)
    report = _both(settings, monkeypatch)
    assert report.ok and report.records == total, report.problems
    assert [r.request_id for r in report.open_requests] == ["r0", "r7", "r14", "r21", "r28"] + [
        f"odd{i}" for i in range(len(AWKWARD))]
    assert _both(settings, monkeypatch, from_seq=8, to_seq=33).records == 26

    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as c:
        last_cp, head, kid = c.execute(
            "SELECT seq, head_hash, key_id FROM audit_checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    rogue = Ed25519PrivateKey.generate()
    at = "2030-01-01T00:00:00.000000+00:00"
    forged = base64.b64encode(rogue.sign(checkpoint_payload(last_cp, head, at, "periodic", kid))).decode()
    steps = [
        ("UPDATE audit_records SET actor = 'key:mallory' WHERE seq = 5", {"changed"}),
        ("UPDATE audit_records SET at = at + interval '1 microsecond' WHERE seq = 9", {"changed"}),
        ("UPDATE audit_records SET details = E'{\"x\":\"\\\\\"\\u0001\"}' WHERE seq = 11", {"changed"}),
        ("UPDATE audit_records SET hash = (SELECT hash FROM audit_records WHERE seq = 13) WHERE seq = 14",
         {"changed"}),  # two records with one hash
        ("DELETE FROM audit_records WHERE seq = 20", {"deleted"}),
        ("UPDATE audit_records SET seq = -1 WHERE seq = 25; UPDATE audit_records SET seq = 25 WHERE seq = 26; "
         "UPDATE audit_records SET seq = 26 WHERE seq = -1", {"reordered"}),
        ("UPDATE audit_records SET request_id = 'r0', tag = 'inference:request:complete' WHERE seq = 31",
         {"changed"}),
        (f"DELETE FROM audit_records WHERE seq > {total - 3}", {"truncated"}),
        ("INSERT INTO audit_checkpoints (seq, head_hash, at, kind, key_id, signature) VALUES "
         f"({last_cp}, '{head}', '{at}', 'periodic', '{kid}', '{forged}')", {"bad-signature"}),
        ("UPDATE audit_records SET at = '2000-01-01 00:00:00+00' WHERE seq = 1", {"changed"}),
    ]
    seen: set[str] = set()
    for sql, kinds in steps:
        _tamper(settings, *sql.split("; "))
        report = _both(settings, monkeypatch)
        seen |= kinds
        assert kinds <= report.kinds() <= seen | {"deleted", "changed", "reordered"}, (sql, report.problems)
        _both(settings, monkeypatch, from_seq=8, to_seq=33)
    assert {"changed", "deleted", "reordered", "truncated", "bad-signature"} <= seen


def test_a_range_before_the_trail_and_an_empty_range(settings: Settings, monkeypatch) -> None:  # noqa: ANN001
    assert _both(settings, monkeypatch, from_seq=10**6).records == 0
    assert _both(settings, monkeypatch, to_seq=0).records == 0

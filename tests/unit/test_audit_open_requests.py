"""``verify`` pairs each inference request's accepted record with its completion by request id and lists the
unpaired ones as open requests: a finding beside the chain check, never a problem (SQLite, no server)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from gateway.audit.chain import AuditChain, head_file_of
from gateway.audit.events import AuditEvent, Tag
from gateway.audit.pins import keys_file_of
from gateway.audit.verify import verify_trail
from gateway.crypto import open_keyring
from gateway.db.base import utcnow
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings


def _trail(tmp_path: Path) -> tuple[Settings, dict[str, int]]:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}",
                        audit_checkpoint_interval_s=3600)
    upgrade(settings)
    old = utcnow() - timedelta(minutes=10)
    seqs: dict[str, int] = {}

    async def run() -> None:
        db = Database(settings)
        chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
        try:
            async def rec(tag: str, rid: str, at=old) -> None:  # noqa: ANN001
                seqs[f"{tag}:{rid}"] = await chain.record(
                    AuditEvent(tag, actor="key:k", target="mock", request_id=rid, at=at))

            await rec(Tag.INFERENCE_ACCEPTED, "done")
            await rec(Tag.INFERENCE_ACCEPTED, "lost")  # answered (or not); its completion never written
            await rec(Tag.INFERENCE, "done")
            await rec(Tag.STREAM_START, "streaming", at=None)  # just now: in flight
            await rec(Tag.INFERENCE_ACCEPTED, "failed")
            await rec(Tag.INFERENCE_FAILED, "failed")
            await rec(Tag.INFERENCE, "legacy")  # one record per request, from before the split: nothing to pair
            await rec(Tag.INFERENCE_ACCEPTED, "twice")  # an id used twice (clients choose ids): paired in order
            await rec(Tag.INFERENCE_ACCEPTED, "twice")
            await rec(Tag.INFERENCE, "twice")
            # the completion as the service writes it: nobody waits, flush() does
            await chain.record(AuditEvent(Tag.INFERENCE_ACCEPTED, actor="key:k", target="mock", request_id="later"))
            chain.record_later(AuditEvent(Tag.INFERENCE, actor="key:k", target="mock", request_id="later"))
            await chain.flush()
        finally:
            await chain.close()
            await db.close()

    asyncio.run(run())
    return settings, seqs


def _verify(settings: Settings, **kw):  # noqa: ANN202
    return verify_trail(settings.database_url, head_file=head_file_of(settings), keys_file=keys_file_of(settings),
                        **kw)


def test_open_requests_are_a_finding_not_a_problem(tmp_path: Path) -> None:
    settings, seqs = _trail(tmp_path)
    report = _verify(settings)
    assert report.ok, report.problems
    found = [(r.request_id, r.seq, r.in_flight) for r in report.open_requests]
    assert found == [("lost", seqs[f"{Tag.INFERENCE_ACCEPTED}:lost"], False),
                     ("streaming", seqs[f"{Tag.STREAM_START}:streaming"], True),
                     ("twice", seqs[f"{Tag.INFERENCE_ACCEPTED}:twice"], False)]
    assert report.in_flight == 1
    assert str(report.open_requests[0]).endswith("open: no completion recorded (process ended before it was written)")
    assert str(report.open_requests[1]).endswith(": in flight")
    # a shorter in-flight window: the stream is open too
    assert [r.in_flight for r in _verify(settings, in_flight_s=0).open_requests] == [False, False, False]


def test_a_range_pairs_with_completions_after_it(tmp_path: Path) -> None:
    settings, seqs = _trail(tmp_path)
    # the range ends before "done"'s completion: still paired; "lost" still open
    report = _verify(settings, to_seq=seqs[f"{Tag.INFERENCE_ACCEPTED}:lost"])
    assert report.ok, report.problems
    assert [r.request_id for r in report.open_requests] == ["lost"]
    # a range that starts after an accepted record: its completion alone is not an open request
    report = _verify(settings, from_seq=seqs[f"{Tag.INFERENCE}:done"])
    assert "done" not in {r.request_id for r in report.open_requests}


def test_a_completion_rides_in_the_commit_of_the_next_record_someone_waits_for(tmp_path: Path) -> None:
    """Under load one commit per request, not two: a completion (nobody waits for it) waits up to
    ``LATER_LINGER_S`` for the next accepted record and commits in its batch; with none coming it goes alone."""
    from gateway.audit.chain import LATER_LINGER_S

    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}",
                        audit_checkpoint_interval_s=3600)
    upgrade(settings)
    batches: list[list[str]] = []

    async def run() -> float:
        db = Database(settings)
        chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
        real = chain._append

        async def append(events):  # noqa: ANN001, ANN202
            batches.append([f"{e.tag.rsplit(':', 1)[1]}:{e.request_id}" for e in events])
            return await real(events)

        chain._append = append  # type: ignore[method-assign]
        try:
            await chain.record(AuditEvent(Tag.INFERENCE_ACCEPTED, actor="key:k", target="mock", request_id="a"))
            chain.record_later(AuditEvent(Tag.INFERENCE, actor="key:k", target="mock", request_id="a"))
            await asyncio.sleep(0.001)  # the writer holds the completion, waiting for company
            await chain.record(AuditEvent(Tag.INFERENCE_ACCEPTED, actor="key:k", target="mock", request_id="b"))
            chain.record_later(AuditEvent(Tag.INFERENCE, actor="key:k", target="mock", request_id="b"))
            started = asyncio.get_running_loop().time()
            await chain.flush()  # nobody comes after b: its completion goes alone once the linger is over
            return asyncio.get_running_loop().time() - started
        finally:
            await chain.close()
            await db.close()

    waited = asyncio.run(run())
    assert batches == [["accepted:a"], ["complete:a", "accepted:b"], ["complete:b"]]
    assert LATER_LINGER_S * 0.8 <= waited < 1.0
    report = _verify(settings)
    assert report.ok and not report.open_requests, report.problems

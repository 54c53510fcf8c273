"""Batch domain pieces on a real SQLite database and keyring: line validation, encrypted file storage, ratings,
and the runner's resume, cancel and expiry rules (with a counting executor standing in for inference)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.audit.chain import AuditChain
from gateway.batches.feedback import normalise_rating, stars
from gateway.batches.lines import Line, check_models, validate
from gateway.batches.runner import BatchRunner
from gateway.batches.storage import CHUNK, PURPOSE, FileStore, StorageError
from gateway.crypto import open_keyring
from gateway.db.base import utcnow
from gateway.db.batches import Batch, BatchFile
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.errors import BadRequest
from gateway.settings import Settings, normalise_db_url

CHAT = "/v1/chat/completions"


def line(cid: str, model: str = "m", url: str = CHAT, **body) -> bytes:
    b = {"model": model, "messages": [{"role": "user", "content": f"hi {cid}"}], **body}
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": b}).encode()


def test_validation_names_each_bad_line() -> None:
    raw = [line("a"), b"{oops", line("b", url="/v1/completions"), line("a"), b"", b"[1, 2]",
           line("c", stream=True), line("d", n=3), json.dumps({"custom_id": "", "url": CHAT, "body": {}}).encode(),
           line("e", temperature=7)]
    report = validate(raw, CHAT, max_lines=100)
    got = {(e["line"], e["code"]) for e in report.errors}
    assert got == {(2, "invalid_json_line"), (3, "invalid_url"), (4, "duplicate_custom_id"),
                   (6, "invalid_json_line"), (7, "invalid_body"), (8, "invalid_body"), (9, "missing_custom_id"),
                   (10, "invalid_body")}
    assert report.total == 9  # the blank line is not a request
    assert report.as_errors()["object"] == "list"


def test_validation_limits_and_models() -> None:
    report = validate([line(str(i)) for i in range(5)], CHAT, max_lines=3)
    assert [e["code"] for e in report.errors] == ["too_many_lines"]
    assert validate([], CHAT, max_lines=3).errors[0]["code"] == "empty_file"
    report = validate([line("a", model="ok"), line("b", model="secret"), line("c", model="secret")], CHAT,
                      max_lines=10)

    async def allowed(model: str) -> bool:
        return model == "ok"

    asyncio.run(check_models(report, allowed))
    assert [(e["line"], e["code"]) for e in report.errors] == [(2, "model_not_found"), (3, "model_not_found")]
    # the message does not say whether the model exists
    assert "does not exist or you do not have access" in report.errors[0]["message"]


def test_ratings() -> None:
    assert normalise_rating("up") == ("up", 1.0) and normalise_rating("thumbs_down") == ("down", 0.0)
    assert normalise_rating(1) == ("1", 0.0) and normalise_rating("5") == ("5", 1.0)
    assert normalise_rating(3) == ("3", 0.5)
    for bad in (0, 6, "meh", True, "2.5"):
        with pytest.raises(BadRequest):
            normalise_rating(bad)
    assert stars("up") == 5 and stars("down") == 1 and stars("4") == 4


@contextlib.asynccontextmanager
async def open_env(tmp_path: Path, database_url: str | None = None):
    """Database, keyring, audit trail and store on the test's own event loop (the audit writer is a task on it)."""
    url = normalise_db_url(database_url or f"sqlite:///{tmp_path / 'p.db'}")
    settings = Settings(data_dir=tmp_path, database_url=url, batch_lease_s=1.0)
    upgrade(settings)
    db = Database(settings)
    keyring = await open_keyring(settings, db)
    await keyring.ensure(PURPOSE)
    audit = await AuditChain.open(settings, db, keyring)
    yield settings, db, keyring, audit, FileStore(tmp_path / "files", keyring)
    await audit.close()
    await db.close()


async def test_store_roundtrip_and_tamper(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    async with open_env(tmp_path) as env:
        *_, store = env
        data = b"".join(line(str(i)) + b"\n" for i in range(5000))
        assert len(data) > 2 * CHUNK
        with store.writer("file-a") as w:
            for i in range(0, len(data), 10_000):
                w.write(data[i:i + 10_000])
        assert w.lines == 5000 and w.bytes == len(data) and w.chunks == -(-len(data) // CHUNK)
        assert b"".join(store.chunks("file-a", w.chunks)) == data
        assert list(store.lines("file-a", w.chunks))[5] == line("5")
        assert b"hi 5" not in store.path("file-a").read_bytes()
        with pytest.raises(StorageError):  # one chunk fewer than recorded: truncated
            list(store.chunks("file-a", w.chunks + 1))
        # a file moved under another id does not open
        store.path("file-a").rename(store.path("file-b"))
        with pytest.raises(StorageError):
            list(store.chunks("file-b", w.chunks))


class Counting:
    """Stands in for the inference pipeline: answers every line, counting how often each ran."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: dict[str, int] = {}
        self.delay = delay

    async def model_allowed(self, model: str) -> bool:
        return model == "m"

    async def infer(self, ln: Line, request_id: str) -> tuple[int, dict]:
        self.calls[ln.custom_id] = self.calls.get(ln.custom_id, 0) + 1
        await asyncio.sleep(self.delay)
        if ln.custom_id == "bad":
            return 400, {"error": {"type": "invalid_request_error", "message": "no"}}
        return 200, {"object": "chat.completion", "echo": ln.custom_id}


async def make_batch(env, ids: list[str], concurrency: int = 2) -> str:
    settings, db, keyring, audit, store = env
    with store.writer("file-in") as w:
        for cid in ids:
            w.write(line(cid) + b"\n")
    now = utcnow()
    async with db.session() as s:
        s.add(BatchFile(id="file-in", owner="key:1", filename="in.jsonl", purpose="batch", bytes=w.bytes,
                        lines=w.lines, chunks=w.chunks, status="processed", created_at=now))
        s.add(Batch(id="batch_1", owner="key:1", endpoint=CHAT, input_file_id="file-in",
                    status="validating", concurrency=concurrency, created_at=now, expires_at=now + timedelta(hours=1)))
    return "batch_1"


def runner(env, ex: Counting) -> BatchRunner:
    settings, db, keyring, audit, store = env
    async def executor_for(batch: Batch) -> Counting:
        return ex

    return BatchRunner(db=db, store=store, audit=audit, settings=settings, executor_for=executor_for,
                       retry_delay_s=0.01)


async def load(env, batch_id: str) -> Batch:
    async with env[1].session() as s:
        return await s.get(Batch, batch_id)


async def outputs(env, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    async with env[1].session() as s:
        f = await s.get(BatchFile, file_id)
    return [json.loads(x) for x in env[4].lines(f.id, f.chunks)]


async def test_runner_completes_and_splits_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    async with open_env(tmp_path) as env:
        ids = ["a", "b", "bad", "c"]
        batch_id = await make_batch(env, ids)
        ex = Counting()
        assert await runner(env, ex).run(batch_id) == "completed"
        b = await load(env, batch_id)
        assert (b.total, b.completed, b.failed) == (4, 3, 1) and b.lease_owner is None
        ok, bad = await outputs(env, b.output_file_id), await outputs(env, b.error_file_id)
        assert [o["custom_id"] for o in ok] == ["a", "b", "c"] and [o["custom_id"] for o in bad] == ["bad"]
        assert bad[0]["response"]["status_code"] == 400 and ok[0]["response"]["body"]["echo"] == "a"
        assert await runner(env, ex).run(batch_id) == "completed"  # a second delivery changes nothing
        assert set(ex.calls.values()) == {1}


async def test_resume_skips_finished_lines(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    async with open_env(tmp_path) as env:
        ids = [f"l{i}" for i in range(12)]
        batch_id = await make_batch(env, ids, concurrency=2)
        first = Counting(delay=0.05)
        task = asyncio.create_task(runner(env, first).run(batch_id))
        while (await load(env, batch_id)).completed < 4:
            await asyncio.sleep(0.02)
        task.cancel()  # the worker dies: lease left behind, some lines finished
        with pytest.raises(asyncio.CancelledError):
            await task
        async with env[1].session() as s:  # (a killed process would not release it: put the lease back)
            await s.execute(update(Batch).values(lease_owner="dead-worker",
                                                 lease_until=utcnow() + timedelta(seconds=1)))
        done_before = (await load(env, batch_id)).completed
        second = Counting()
        assert await runner(env, second).run(batch_id) == "busy"  # the dead worker's lease has not run out yet
        await asyncio.sleep(1.1)
        assert await runner(env, second).run(batch_id) == "completed"
        assert len(second.calls) == len(ids) - done_before
        b = await load(env, batch_id)
        assert b.completed == len(ids)
        assert sorted(o["custom_id"] for o in await outputs(env, b.output_file_id)) == sorted(ids)


async def test_expiry_keeps_partial_results(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    async with open_env(tmp_path) as env:
        ids = [f"e{i}" for i in range(20)]
        batch_id = await make_batch(env, ids, concurrency=1)
        ex = Counting(delay=0.1)
        task = asyncio.create_task(runner(env, ex).run(batch_id))
        while (await load(env, batch_id)).completed < 2:
            await asyncio.sleep(0.02)
        async with env[1].session() as s:
            await s.execute(update(Batch).values(expires_at=utcnow()))
        assert await task == "expired"
        b = await load(env, batch_id)
        assert b.expired_at is not None and 2 <= b.completed < 20
        assert len(await outputs(env, b.output_file_id)) == b.completed


async def test_validation_failure_runs_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    async with open_env(tmp_path) as env:
        batch_id = await make_batch(env, ["a", "a"])
        ex = Counting()
        assert await runner(env, ex).run(batch_id) == "failed"
        b = await load(env, batch_id)
        assert b.errors["data"][0]["code"] == "duplicate_custom_id" and not ex.calls


async def test_batch_found_after_its_window_expires_without_running(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    async with open_env(tmp_path) as env:
        batch_id = await make_batch(env, ["a", "b"])
        async with env[1].session() as s:
            await s.execute(update(Batch).values(expires_at=utcnow()))
        ex = Counting()
        assert await runner(env, ex).run(batch_id) == "expired"
        b = await load(env, batch_id)
        assert not ex.calls and b.output_file_id is None and b.expired_at is not None


async def test_runner_on_postgres(tmp_path, monkeypatch, pg_url) -> None:
    """The lease, the conditional state changes and the unique result per line on Postgres."""
    monkeypatch.delenv("PALISADE_MASTER_KEY", raising=False)
    async with open_env(tmp_path, pg_url) as env:
        batch_id = await make_batch(env, ["a", "bad", "c"])
        ex = Counting()
        assert await runner(env, ex).run(batch_id) == "completed"
        b = await load(env, batch_id)
        assert (b.completed, b.failed) == (2, 1)
        assert await runner(env, ex).run(batch_id) == "completed" and set(ex.calls.values()) == {1}

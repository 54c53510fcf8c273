"""Shipping audit records to a SIEM: real syslog receivers (UDP and TCP sockets) and the JSON lines file sink.

Each frame must be well-formed RFC 5424 (PRI, VERSION 1, RFC 3339 TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID,
STRUCTURED-DATA, a UTF-8 BOM then the record as JSON) and carry the same record the database chain holds.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

from gateway.audit.chain import AuditChain
from gateway.audit.events import AuditEvent, Tag
from gateway.crypto import open_keyring
from gateway.db.migrate import upgrade
from gateway.db.session import Database
from gateway.settings import Settings
from tests.support.server import base_env, cli, create_key

# RFC 5424 section 6, with PRINTUSASCII fields and one SD-ELEMENT of PARAM-NAME="value" pairs
_FRAME = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) (?P<ts>\S+) (?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) "
    rb"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) (?P<sd>-|\[[^\]]+\]) \xef\xbb\xbf(?P<msg>.*)\Z",
    re.S,
)
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_SD = re.compile(r'^\[(?P<id>[^ =\]"@]+@\d+)(?P<params>( [^ =\]"]{1,32}="[^"\\\]]*")+)\]$')


def _parse(frame: bytes) -> dict:
    m = _FRAME.match(frame)
    assert m, frame[:200]
    assert m["pri"] == b"85" and m["version"] == b"1"  # authpriv (10) * 8 + notice (5)
    ts = m["ts"].decode()
    assert _TS.match(ts) and datetime.fromisoformat(ts.replace("Z", "+00:00")).tzinfo is not None, ts
    assert m["app"] == b"palisade" and m["procid"].isdigit()
    sd = _SD.match(m["sd"].decode())
    assert sd and sd["id"] == "palisade@32473", m["sd"]
    params = dict(re.findall(r' ([^=]+)="([^"]*)"', sd["params"]))
    record = json.loads(m["msg"].decode("utf-8"))
    assert m["msgid"].decode() == record["tag"]
    assert params == {"seq": str(record["seq"]), "hash": record["hash"]}
    return record


def _db_records(data: Path) -> dict[int, tuple[str, str]]:
    with sqlite3.connect(data / "palisade.db") as c:
        return {seq: (tag, h) for seq, tag, h in c.execute("SELECT seq, tag, hash FROM audit_records")}


def test_cli_events_ship_to_udp_syslog_and_a_jsonl_file(tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(10)
    ship = tmp_path / "siem.jsonl"
    env = base_env(
        tmp_path / "data",
        PALISADE_AUDIT_SYSLOG=f"udp://127.0.0.1:{udp.getsockname()[1]}",
        PALISADE_AUDIT_SHIP=str(ship),
    )
    try:
        key = create_key(env, "ship-a")
        cli(env, "keys", "revoke", key[:16])  # the prefix pal_<12 hex>
        frames = [udp.recvfrom(65535)[0] for _ in range(2)]
    finally:
        udp.close()
    shipped = [_parse(f) for f in frames]
    lines = [json.loads(line) for line in ship.read_text().splitlines()]
    assert [r["tag"] for r in shipped] == [Tag.KEY_CREATE, Tag.KEY_REVOKE]
    assert lines == shipped  # both sinks carry the same records
    stored = _db_records(tmp_path / "data")
    assert {r["seq"]: (r["tag"], r["hash"]) for r in shipped} == stored  # ... the chain's own
    assert all(r["prev_hash"] and r["at"] for r in shipped)
    assert key not in ship.read_text() and key.encode() not in b"".join(frames)


def test_concurrent_events_ship_in_chain_order_over_tcp_syslog(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    received = bytearray()
    done = threading.Event()

    def accept() -> None:
        conn, _ = server.accept()
        conn.settimeout(10)
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)
        done.set()

    threading.Thread(target=accept, daemon=True).start()
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'palisade.db'}",
        audit_syslog=f"tcp://127.0.0.1:{server.getsockname()[1]}",
        audit_checkpoint_interval_s=3600,
    )
    upgrade(settings)

    async def run() -> None:
        db = Database(settings)
        chain = await AuditChain.open(settings, db, await open_keyring(settings, db))
        try:
            await asyncio.gather(
                *(
                    chain.record(AuditEvent(Tag.INFERENCE, actor=f"key:{i}", target="tiny", decision="allow"))
                    for i in range(12)
                )
            )
        finally:
            await chain.close()  # closes the TCP connection: the receiver sees EOF
            await db.close()

    try:
        asyncio.run(run())
        assert done.wait(10)
    finally:
        server.close()
    frames, rest = [], bytes(received)
    while rest:  # RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG
        length, _, rest = rest.partition(b" ")
        frames.append(rest[: int(length)])
        rest = rest[int(length) :]
    shipped = [_parse(f) for f in frames]
    assert [r["seq"] for r in shipped] == list(range(1, 13))
    assert sorted(r["actor"] for r in shipped) == sorted(f"key:{i}" for i in range(12))
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(shipped, shipped[1:], strict=False))
    assert {r["seq"]: (r["tag"], r["hash"]) for r in shipped} == _db_records(tmp_path)

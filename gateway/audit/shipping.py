"""Copies of committed audit records for a SIEM: JSON lines to stdout or a file, and syslog (RFC 5424).

Shipping is best effort and happens after the commit: the database chain is the record of truth, so a slow or
absent collector never holds a request (its failures are logged).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

_log = structlog.get_logger("palisade.audit.ship")


class Sink(Protocol):
    def ship(self, records: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


class JsonLinesSink:
    def __init__(self, target: str) -> None:
        self._own = target != "stdout"
        self._out = open(target, "a", encoding="utf-8") if self._own else sys.stdout  # noqa: SIM115

    def ship(self, records: list[dict[str, Any]]) -> None:
        self._out.write(
            "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        )
        self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()


class SyslogSink:
    """RFC 5424 over UDP (one datagram per record) or TCP (octet counting, RFC 6587)."""

    FACILITY_AUTHPRIV = 10
    SEVERITY_NOTICE = 5

    def __init__(self, url: str, app_name: str = "palisade") -> None:
        parts = urlsplit(url)
        self.addr = (parts.hostname or "127.0.0.1", parts.port or 514)
        self.tcp = parts.scheme == "tcp"
        self.host = socket.gethostname()[:255] or "-"
        self.app = app_name
        self.sock: socket.socket | None = None

    def format(self, record: dict[str, Any]) -> bytes:
        pri = self.FACILITY_AUTHPRIV * 8 + self.SEVERITY_NOTICE
        ts = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        msgid = str(record.get("tag", "-")).replace(" ", "_")[:32] or "-"
        sd = f'[palisade@32473 seq="{record.get("seq")}" hash="{record.get("hash")}"]'
        msg = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return f"<{pri}>1 {ts} {self.host} {self.app} {os.getpid()} {msgid} {sd} \ufeff{msg}".encode()

    def ship(self, records: list[dict[str, Any]]) -> None:
        try:
            if self.sock is None:
                self.sock = socket.socket(
                    socket.AF_INET, socket.SOCK_STREAM if self.tcp else socket.SOCK_DGRAM
                )
                self.sock.settimeout(1.0)
                if self.tcp:
                    self.sock.connect(self.addr)
            for r in records:
                frame = self.format(r)
                if self.tcp:
                    self.sock.sendall(str(len(frame)).encode() + b" " + frame)
                else:
                    self.sock.sendto(frame, self.addr)
        except OSError as exc:
            _log.warning("syslog shipping failed", error=type(exc).__name__)
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def sinks_from_settings(ship: str | None, syslog: str | None) -> list[Sink]:
    sinks: list[Sink] = []
    if ship:
        sinks.append(JsonLinesSink(ship))
    if syslog:
        sinks.append(SyslogSink(syslog))
    return sinks

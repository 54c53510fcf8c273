"""A throwaway Postgres cluster on a free port (Debian's pg_createcluster / pg_ctlcluster), so a fault drill can
stop and start it without touching the shared server on 5432. Trust authentication on 127.0.0.1 only."""

from __future__ import annotations

import secrets
import shutil
import subprocess

import psycopg

from tests.support.server import free_port
from tests.support.waiting import wait_until


def available() -> bool:
    return all(shutil.which(t) for t in ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters"))


class PrivatePostgres:
    def __init__(self) -> None:
        self.version = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                                      check=True).stdout.split()[0]
        self.name = f"t16_{secrets.token_hex(3)}"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create(self) -> PrivatePostgres:
        subprocess.run(["pg_createcluster", self.version, self.name, "-p", str(self.port), "--",
                        "--auth-host=trust", "--auth-local=trust"], check=True, capture_output=True)
        return self.start()

    def start(self) -> PrivatePostgres:
        subprocess.run(["pg_ctlcluster", self.version, self.name, "start"], check=True, capture_output=True)
        wait_until(self._up, timeout=30, what="the private Postgres to accept connections")
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(["pg_ctlcluster", self.version, self.name, "stop", "-m", mode], check=True,
                       capture_output=True)

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", self.version, self.name], capture_output=True)

    def _up(self) -> bool:
        with psycopg.connect(self.url, connect_timeout=2) as c:
            return c.execute("SELECT 1").fetchone() == (1,)

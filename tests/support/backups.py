"""Shared by the backup/restore tests: a fake-upstream models file, a backup key, traffic during a backup, and
small helpers around the real CLI."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.fake_upstreams import fake_upstream
from tests.support.server import cli

REDIS_DB15 = "redis://127.0.0.1:6379/15"
#: the traffic below runs as fast as the gateway answers: lift the per-principal request limits for it
UNLIMITED = {"PALISADE_LIMIT_REQUESTS_PER_MIN": "1000000", "PALISADE_LIMIT_TOKENS_PER_MIN": "100000000",
             "PALISADE_LIMIT_DAILY_TOKENS": "1000000000"}


@pytest.fixture(scope="module")
def upstream_models(tmp_path_factory):
    with fake_upstream("ok", "openai") as url:
        path = tmp_path_factory.mktemp("models") / "models.yaml"
        path.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: \"{url}\"\n"
                        f"    upstream_model: fake-model\n")
        yield path


@pytest.fixture(scope="module")
def backup_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class Traffic:
    """Requests in a loop from a thread until stopped; every answer must be a 200."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key, self.ok, self.failed = url, key, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30) as c:
            deadline = time.monotonic() + 180
            for _ in range(5000):  # bounded in count and time, whatever happens to the test
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                r = c.post("/v1/chat/completions",
                           json={"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append((r.status_code, r.text[:200]))
                self._stop.wait(0.05)  # ~20 requests/s: steady traffic that leaves the 2 cores to the backup

    def wait_for(self, ok: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ok < ok and not self.failed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.ok >= ok, f"traffic stalled at {self.ok} answers: {self.failed[:3]}"

    def __enter__(self) -> Traffic:
        self._thread.start()
        self.wait_for(5)  # the backup starts with requests in flight
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verify_ok(env) -> str:
    proc = cli(env, "audit", "verify", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def new_data_dir(tmp_path: Path, name: str, source_data: Path) -> Path:
    """A new machine's data dir: only the escrowed master key is there."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy2(source_data / "master.key", d / "master.key")
    return d


def flip(src: Path, dest: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x40
    dest.write_bytes(bytes(data))
    return dest


def backup_under_traffic(env: dict[str, str], log: Path, archive: Path) -> tuple[dict, str]:
    """Migrate, serve, and take ``palisade backup`` while a client keeps sending requests; returns the backup's JSON
    (once traffic went on across it with no failed request) and the API key the traffic used."""
    from tests.support.server import GatewayProcess, cli, create_key

    if env.get("PALISADE_DATABASE_URL"):
        cli(env, "migrate")  # (the embedded SQLite file is migrated by the CLI's first use: `keys create` below)
    key = create_key(env, "app", "mock")
    gw = GatewayProcess(env, log).start()
    try:
        with Traffic(gw.url, key) as traffic:
            made = last_json(cli(env, "backup", "--out", str(archive)))
            traffic.wait_for(traffic.ok + 5)  # traffic went on across the backup
        assert not traffic.failed, traffic.failed[:3]
    finally:
        gw.stop()
    return made, key

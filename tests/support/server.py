"""Real gateway processes for tests: `palisade serve` on a free port, and the `palisade` CLI, same environment."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALISADE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PALISADE_DATA_DIR=str(data_dir),
               PALISADE_LOG_LEVEL="warning", PYTHONUNBUFFERED="1", PALISADE_SERVE_WORKER="false")
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"palisade {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def create_key(env: dict[str, str], name: str = "test-app", *models: str) -> str:
    args = ["keys", "create", "--name", name]
    for m in models:
        args += ["--model", m]
    return cli(env, *args).stdout.strip().splitlines()[-1]


class GatewayProcess:
    """``palisade serve`` in a subprocess; ``url`` once /readyz answers."""

    def __init__(self, env: dict[str, str], log_path: Path, *, ca: Path | None = None) -> None:
        self.env = env
        self.port = free_port()
        #: with ``ca`` (the CA of PALISADE_TLS_CERT) the gateway is reached over https, verified against it
        self.verify: str | bool = str(ca) if ca is not None else True
        self.url = f"{'https' if ca is not None else 'http'}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0, ready: bool = True) -> GatewayProcess:
        return self.launch().wait(timeout, ready)

    def launch(self) -> GatewayProcess:
        """Start the process without waiting for it (``wait`` then waits): several replicas start side by side."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self

    def wait(self, timeout: float = 120.0, ready: bool = True) -> GatewayProcess:
        """Until /readyz (``ready``; else /healthz) answers 200; stopped and an error if it exits or times out."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        path = "/readyz" if ready else "/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + path, timeout=2, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


def start_all(gateways: list[GatewayProcess], timeout: float = 120.0) -> list[GatewayProcess]:
    """Launch every gateway, then wait for each to be ready: replicas start side by side, not one after another."""
    try:
        for gw in gateways:  # at once, also on a fresh data dir (one of them creates its master.key)
            gw.launch()
        for gw in gateways:
            gw.wait(timeout)
    except BaseException:
        for gw in gateways:
            gw.stop()
        raise
    return gateways


def principal_ids(env: dict[str, str], *keys: str) -> list[str]:
    """The principal ids of API keys, from one `palisade keys list`."""
    import json

    rows = [json.loads(line) for line in cli(env, "keys", "list").stdout.splitlines() if line.startswith("{")]
    by_prefix = {r["prefix"]: r["id"] for r in rows}
    return ["key:" + by_prefix["_".join(k.split("_")[:2])] for k in keys]


@contextlib.contextmanager
def celery_worker(env: dict[str, str], log_path: Path, *, queues: str = "cpu", concurrency: int = 1,
                  beat: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """``palisade worker`` in a subprocess (same environment as the gateway), stopped with a warm shutdown."""
    args = [sys.executable, "-m", "gateway.cli", "worker", "--queues", queues, "--concurrency", str(concurrency)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*args, *(["--beat"] if beat else [])], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def embedded_env(tmp_path_factory: Any, name: str, **extra: str) -> tuple[dict[str, str], Path]:
    """A migrated embedded-mode data dir (SQLite, SQLite broker) and its environment."""
    data = tmp_path_factory.mktemp(name)
    env = base_env(data, **extra)
    cli(env, "migrate")
    return env, data

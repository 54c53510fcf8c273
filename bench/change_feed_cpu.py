"""CPU of one `palisade serve` (Postgres + Redis) while idle and at a low request rate: what the change feed's
periodic check costs. Usage: ``python -m bench.change_feed_cpu [--seconds 30] [--rate 20]``.

Prints the gateway process's CPU seconds (user + system, psutil) over an idle window and over a window of
``--rate`` chat completions per second against a fake upstream. Noisy on a shared machine: repeat and compare
medians.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import psycopg

from tests.support.fake_upstreams import serve_fake
from tests.support.server import GatewayProcess, base_env, cli, create_key

PG_ADMIN_URL = os.environ.get("PALISADE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PALISADE_BENCH_REDIS", "redis://127.0.0.1:6379/13")


def cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def load(url: str, key: str, rate: float, seconds: float) -> tuple[int, int]:
    ok = bad = 0
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)
            r = c.post(url + "/v1/chat/completions", json=body)
            ok, bad = (ok + 1, bad) if r.status_code == 200 else (ok, bad + 1)
            n += 1
    return ok, bad


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=20.0)
    a = p.parse_args()
    name = f"palisade_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    pg_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    tmp = Path(tempfile.mkdtemp(prefix="feedcpu-"))
    try:
        with serve_fake("ok", "openai") as upstream:
            models = tmp / "models.yaml"
            models.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
                              f"    upstream_model: fake-model\n")
            env = base_env(tmp / "data", PALISADE_DATABASE_URL=pg_url, PALISADE_REDIS_URL=REDIS_URL,
                           PALISADE_MODELS_FILE=str(models), PALISADE_LIMIT_REQUESTS_PER_MIN="100000")
            cli(env, "migrate")
            key = create_key(env, "bench")
            gw = GatewayProcess(env, tmp / "gw.log").start()
            try:
                pid = gw.proc.pid  # type: ignore[union-attr]
                load(gw.url, key, a.rate, 3.0)  # warm
                time.sleep(2.0)
                c0 = cpu(pid)
                time.sleep(a.seconds)
                idle = cpu(pid) - c0
                c0 = cpu(pid)
                ok, bad = load(gw.url, key, a.rate, a.seconds)
                busy = cpu(pid) - c0
                print(f"idle {a.seconds:.0f}s: {idle:.3f} CPU-s ({100 * idle / a.seconds:.2f} %)")
                print(f"{a.rate:.0f} req/s for {a.seconds:.0f}s ({ok} ok, {bad} failed): {busy:.3f} CPU-s "
                      f"({100 * busy / a.seconds:.2f} %, {1000 * busy / max(ok, 1):.2f} ms/request)")
            finally:
                gw.stop()
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()

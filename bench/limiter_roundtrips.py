"""Redis round trips per limited request (reserve + settle), counted by the server (INFO commandstats) on a
private redis-server, and the time per request next to one PING.

Run: ``python -m bench.limiter_roundtrips [--n 2000]`` (needs ``redis-server`` on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
from pathlib import Path

import redis.asyncio as aioredis

from gateway.authn.principal import Principal
from gateway.limits.config import LimitsConfig
from gateway.limits.limiter import RateLimiter
from gateway.settings import Settings
from tests.support.server import free_port


def calls(stats: dict) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k.startswith("cmdstat_")}


async def run(url: str, n: int) -> None:
    client = aioredis.from_url(url)
    settings = Settings(
        data_dir=Path("/tmp"),
        database_url="sqlite:///:memory:",
        limit_requests_per_min=10**9,
        limit_tokens_per_min=10**9,
        limit_daily_tokens=10**12,
        limit_concurrency=1000,
    )
    config = LimitsConfig(settings)
    config.snapshot.rules[("department", "research")] = {"tokens_per_min": 10**9}
    config.snapshot.rules[("model", "chat")] = {"requests_per_min": 10**9}
    limiter = RateLimiter(config, redis=client)
    p = Principal("key:bench", "app", "bench", "api_key", roles=("app",), attributes={"department": "research"})
    await limiter.settle(await limiter.reserve(p, "chat", 100), 50)  # loads the scripts once
    await client.config_resetstat()
    per_request = []
    for _ in range(n):
        t = time.perf_counter_ns()
        await limiter.settle(await limiter.reserve(p, "chat", 100), 50)
        per_request.append((time.perf_counter_ns() - t) / 1000)
    counted = calls(await client.info("commandstats"))
    counted.pop("info", None)
    counted.pop("config|resetstat", None)
    # the gateway's own path: the settle is released (not awaited) and rides with the next reserve
    await client.config_resetstat()
    released = []
    for _ in range(n):
        t = time.perf_counter_ns()
        limiter.release(await limiter.reserve(p, "chat", 100), 50)
        released.append((time.perf_counter_ns() - t) / 1000)
    await limiter.close()  # the last settle, on its own
    carried = calls(await client.info("commandstats"))
    carried_top = sum(v for k, v in carried.items() if k in ("evalsha", "eval", "script|load"))
    pings = []
    for _ in range(n):
        t = time.perf_counter_ns()
        await client.ping()
        pings.append((time.perf_counter_ns() - t) / 1000)
    top_level = sum(v for k, v in counted.items() if k in ("evalsha", "eval", "script|load"))
    print(f"requests: {n}   scopes per request: 3 (principal, department, model)")
    sent = ", ".join(f"{k}={v}" for k, v in sorted(counted.items()) if k in ("evalsha", "eval", "script|load"))
    print(
        f"commands sent by the client per request: {top_level / n:.2f}  ({sent})"
    )
    print(
        f"commands run inside the scripts (server-side, no round trip): "
        f"{sum(v for k, v in counted.items() if k not in ('evalsha', 'eval', 'script|load')) / n:.1f} per request"
    )
    print(f"{'':30}{'p50 (us)':>12}{'p99 (us)':>12}")
    print(
        f"{'reserve + settle':30}{statistics.median(per_request):12.0f}"
        f"{statistics.quantiles(per_request, n=100)[98]:12.0f}"
    )
    print(f"{'reserve + release (gateway)':30}{statistics.median(released):12.0f}"
          f"{statistics.quantiles(released, n=100)[98]:12.0f}"
          f"   round trips per request: {carried_top / n:.3f} (the settle rides with the next reserve)")
    print(f"{'one PING':30}{statistics.median(pings):12.0f}{statistics.quantiles(pings, n=100)[98]:12.0f}")
    print(
        f"round trips per request: {top_level / n:.0f} (target <= 2); time = "
        f"{statistics.median(per_request) / statistics.median(pings):.1f}x one PING"
    )
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        asyncio.run(run(f"redis://127.0.0.1:{port}/0", args.n))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()

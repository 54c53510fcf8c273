"""CPU per upstream request: aiohttp's ClientSession against the gateway's HTTP/1.1 client (gateway.inference.http1).

    python -m bench.upstream_client --loadgen DIR [--requests 3000] [--rounds 2]

Both send the same POST (keep-alive, one connection, one at a time) to the Go mock of a built shared/loadbench
copy (``DIR/bin/mockupstream``) pinned to cpu0, from this process pinned to cpu1, read the whole answer, and
report wall time and process CPU time (user + system, from getrusage) per request, alternating A/B rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import time
from pathlib import Path

import aiohttp
import uvloop

from gateway.inference.http1 import Http1Client
from tests.support.server import free_port

BODY = b'{"model":"x","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
PATH = "/v1/chat/completions"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(base: str, n: int, rounds: int) -> None:
    lean = Http1Client(base, headers={"Accept": "application/json"}, connect_timeout_s=3, max_connections=256,
                       keepalive_s=4)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, limit_per_host=0),
                                    cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)

    async def with_aiohttp(count: int) -> None:
        for _ in range(count):
            async with asyncio.timeout(60), session.post(base + PATH, data=BODY, allow_redirects=False,
                                                         headers={"Content-Type": "application/json"}) as r:
                await r.read()

    async def with_http1(count: int) -> None:
        for _ in range(count):
            async with asyncio.timeout(60):
                r = await lean.request("POST", PATH, BODY, content_type="application/json")
                try:
                    await r.read()
                finally:
                    r.release()

    try:
        for _ in range(rounds):
            for name, fn in (("aiohttp ClientSession", with_aiohttp), ("gateway.inference.http1", with_http1)):
                await fn(200)  # warm
                c0, t0 = cpu_s(), time.perf_counter()
                await fn(n)
                wall, cpu = (time.perf_counter() - t0) / n * 1e6, (cpu_s() - c0) / n * 1e6
                print(f"{name:24s} {wall:7.0f} µs wall {cpu:7.0f} µs CPU per request")
    finally:
        await session.close()
        await lean.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loadgen", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    port = free_port()
    mock = subprocess.Popen(["taskset", "-c", "0", str(args.loadgen / "bin" / "mockupstream"), "-addr",
                             f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        os.sched_setaffinity(0, {1})
        uvloop.run(run(f"http://127.0.0.1:{port}", args.requests, args.rounds))
    finally:
        mock.terminate()


if __name__ == "__main__":
    main()

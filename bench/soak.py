"""Soak: a steady mixed load (streaming and non-streaming) for minutes; nothing may drift or fail.

    python -m bench.soak [--minutes 10] [--rate 300] [--stream-share 0.3] [--mode production|embedded]

Open-loop load at ``--rate`` req/s (requests start on a fixed schedule) against one gateway in front of the fake
upstream. Every 10 s it samples the gateway process's RSS and open file descriptors. Pass criteria, checked at
the end and printed as a table plus one JSON line:

- zero errors (every answer 200; every stream ends with ``[DONE]``);
- RSS flat: at most 5 % growth from the end of the first minute (warm-up) to the end;
- file descriptors flat: at most +10 from the end of the first minute to the end;
- ``palisade audit verify`` passes over the whole run's records.

Exit status 1 when a criterion fails. ``--minutes 1 --rate 50`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.gateway_overhead import production_env, start_upstream
from tests.support.server import GatewayProcess, base_env, cli, create_key, free_port

BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "ping with a few words"}], "max_tokens": 8}
SAMPLE_EVERY_S = 10.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def drive(url: str, key: str, rate: float, seconds: float, stream_share: float, pid: int) -> dict:
    counts = {"ok": 0, "stream_ok": 0, "errors": 0}
    error_kinds: dict[str, int] = {}
    samples: list[dict] = []
    rng = random.Random(7)
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Authorization": f"Bearer {key}"}

    async def one(stream: bool) -> None:
        try:
            async with session.post(url, json={**BODY, "stream": stream}) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}")
                if stream and b"data: [DONE]" not in body:
                    raise RuntimeError("stream without [DONE]")
            counts["stream_ok" if stream else "ok"] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted and named
            counts["errors"] += 1
            kind = str(exc)[:80] or type(exc).__name__
            error_kinds[kind] = error_kinds.get(kind, 0) + 1

    async def sampler(start: float) -> None:
        while True:
            samples.append({"t": round(time.perf_counter() - start, 1), "rss_kib": rss_kib(pid),
                            "fds": open_fds(pid)})
            await asyncio.sleep(SAMPLE_EVERY_S)

    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as session:
        start = time.perf_counter()
        watch = asyncio.create_task(sampler(start))
        tasks: set[asyncio.Task] = set()
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(rng.random() < stream_share))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        watch.cancel()
    samples.append({"t": round(elapsed, 1), "rss_kib": rss_kib(pid), "fds": open_fds(pid)})
    return {"requests": n, **counts, "error_kinds": error_kinds, "achieved_rps": round(n / elapsed, 1),
            "samples": samples}


def verdict(result: dict, warmup_s: float) -> dict:
    samples = result["samples"]
    base = next((s for s in samples if s["t"] >= warmup_s), samples[0])
    last = samples[-1]
    growth = (last["rss_kib"] - base["rss_kib"]) / max(1, base["rss_kib"])
    return {
        "zero_errors": result["errors"] == 0,
        "rss_growth_pct": round(100 * growth, 2),
        "rss_flat": growth <= 0.05,
        "fd_growth": last["fds"] - base["fds"],
        "fds_flat": last["fds"] - base["fds"] <= 10,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--stream-share", type=float, default=0.3, help="Fraction of requests that stream.")
    ap.add_argument("--mode", choices=["production", "embedded"], default="production")
    args = ap.parse_args()

    up_port = free_port()
    upstream = start_upstream(up_port)
    tmp = Path(tempfile.mkdtemp(prefix="palisade-soak-"))
    models = tmp / "models.yaml"
    models.write_text(f"models:\n  - alias: mock-gpt\n    backend: openai\n    url: http://127.0.0.1:{up_port}/v1\n"
                      f"    upstream_model: gpt-x\n    max_concurrency: 4096\n")
    extra = production_env(tmp) if args.mode == "production" else {}
    dbname = extra.pop("_DBNAME", None)
    limits = {"PALISADE_LIMIT_REQUESTS_PER_MIN": "100000000", "PALISADE_LIMIT_TOKENS_PER_MIN": "1000000000000",
              "PALISADE_LIMIT_CONCURRENCY": "100000", "PALISADE_LIMIT_DAILY_TOKENS": "1000000000000"}
    env = base_env(tmp, PALISADE_MODELS_FILE=str(models), PALISADE_HEALTH_INTERVAL_S="30", **limits, **extra)
    if args.mode == "production":
        subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], env=env, check=True, capture_output=True)
    key = create_key(env, "soak", "mock-gpt")
    gw = GatewayProcess(env, tmp / "serve.log").start()
    seconds = args.minutes * 60
    try:
        result = asyncio.run(drive(gw.url + "/v1/chat/completions", key, args.rate, seconds, args.stream_share,
                                   gw.proc.pid))
    finally:
        gw.stop()
        upstream.terminate()
    verify = cli(env, "audit", "verify", check=False)
    v = verdict(result, warmup_s=min(60.0, seconds / 2))
    v["audit_verified"] = verify.returncode == 0
    if dbname:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    print(f"\nSoak: {args.minutes:g} min at {args.rate:g} req/s, {args.stream_share:.0%} streaming ({args.mode})")
    print(f"{'t (s)':>8}{'RSS MiB':>10}{'fds':>6}")
    for s in result["samples"]:
        print(f"{s['t']:8.0f}{s['rss_kib'] / 1024:10.1f}{s['fds']:6d}")
    print(f"requests {result['requests']}  ok {result['ok']}  streams ok {result['stream_ok']}  "
          f"errors {result['errors']}  achieved {result['achieved_rps']}/s")
    for name in ("zero_errors", "rss_flat", "fds_flat", "audit_verified"):
        print(f"  {name:16} {'PASS' if v[name] else 'FAIL'}")
    print(f"  rss growth {v['rss_growth_pct']} % (<= 5), fd growth {v['fd_growth']} (<= 10)")
    if not v["audit_verified"]:
        print(verify.stdout[-2000:] + verify.stderr[-2000:])
    ok = all(v[k] for k in ("zero_errors", "rss_flat", "fds_flat", "audit_verified"))
    print(json.dumps({"bench": "soak", "minutes": args.minutes, "rate": args.rate, "mode": args.mode,
                      "pass": ok, **v, **{k: result[k] for k in ("requests", "ok", "stream_ok", "errors",
                                                                   "error_kinds", "achieved_rps", "samples")}}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

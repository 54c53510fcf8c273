"""Hot-swap under load: p99 latency and errors during repeated promote/rollback swaps, versus the same load
without swaps, in one run; and the swap time from approval to every replica serving the new version.

    python -m bench.hot_swap [--mode embedded|production] [--rate 8] [--seconds 20] [--every 3] [--quick]

Two tiny random-weight models are built in a temp folder (no download); the alias ``chat`` starts on one, the
other is imported as a candidate, and an approver (password + TOTP) flips the alias back and forth every
``--every`` seconds. Load is open-loop (requests start on a fixed schedule), half of them streaming; a streamed
answer counts as an error unless it ends with ``[DONE]`` and names exactly one version. ``production`` runs two
replicas on Postgres + Redis (db 12) and counts a swap as done when both have served it (their own audit
records: when each learned the flip and how long its load took).
Targets (issue 11): p99 during swaps <= 2x without, 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import httpx

from bench.gateway_overhead import pct
from tests.support.people import login
from tests.support.server import GatewayProcess, base_env, cli, create_key
from tests.support.tiny_model import make_tiny_model

HEADER = "X-Palisade-Model-Version"
SWAP_TAG = "registry:replica:swap"


async def drive(urls: list[str], key: str, rate: float, seconds: float) -> dict:
    """Open-loop: one request every 1/rate s, alternating replicas and streaming / not."""
    latencies: list[float] = []
    errors: list[str] = []
    versions: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "chat", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 8}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i: int) -> None:
            url = urls[i % len(urls)] + "/v1/chat/completions"
            stream = i % 2 == 0
            t0 = time.perf_counter()
            try:
                async with session.post(url, json={**body, "stream": stream}) as r:
                    text = await r.text()
                    got = r.headers.getall(HEADER, [])
                    if r.status != 200 or len(got) != 1 or (stream and "data: [DONE]" not in text):
                        errors.append(f"{r.status} {got} {text[:120]}")
                        return
                    versions[got[0]] = versions.get(got[0], 0) + 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                errors.append(type(exc).__name__)
                return
            latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*[one(i) for i in range(4)])  # warm
        latencies.clear()
        errors.clear()
        versions.clear()
        tasks, n, start = [], int(rate * seconds), time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return {"n": n, "ok": len(latencies), "errors": len(errors), "error_samples": errors[:3],
            "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99), "versions": versions}


def rss_mb(gw: GatewayProcess) -> float:
    import psutil

    assert gw.proc is not None
    return round(psutil.Process(gw.proc.pid).memory_info().rss / 2**20, 1)


def swap_records(env: dict[str, str], data: Path) -> list[dict]:
    url = env.get("PALISADE_DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT details FROM audit_records WHERE tag = %s ORDER BY seq", (SWAP_TAG,)).fetchall()
    else:
        with sqlite3.connect(data / "palisade.db") as conn:
            rows = conn.execute("SELECT details FROM audit_records WHERE tag = ? ORDER BY seq", (SWAP_TAG,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["embedded", "production"], default="embedded")
    ap.add_argument("--rate", type=float, default=8.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--every", type=float, default=3.0, help="seconds between swaps")
    ap.add_argument("--quick", action="store_true", help="a short run (rate 4, 10 s, a swap every 2.5 s)")
    args = ap.parse_args()
    if args.quick:
        args.rate, args.seconds, args.every = 4.0, 10.0, 2.5

    data = Path(tempfile.mkdtemp(prefix="palisade-hotswap-"))
    imports = data / "imports"
    make_tiny_model(imports / "a", seed=0)
    make_tiny_model(imports / "b", seed=1)
    models = data / "models.yaml"
    models.write_text(f"models:\n  - alias: chat\n    backend: embedded\n    model: {imports / 'a'}\n")
    extra: dict[str, str] = {}
    dbname = None
    if args.mode == "production":
        import secrets

        import psycopg
        import redis

        dbname = f"palisade_bench_{secrets.token_hex(4)}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{dbname}"')
        redis.Redis.from_url("redis://127.0.0.1:6379/12").flushdb()
        extra = {"PALISADE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{dbname}",
                 "PALISADE_REDIS_URL": "redis://127.0.0.1:6379/12"}
    limits = {"PALISADE_LIMIT_REQUESTS_PER_MIN": "100000000", "PALISADE_LIMIT_TOKENS_PER_MIN": "1000000000000",
              "PALISADE_LIMIT_CONCURRENCY": "100000", "PALISADE_LIMIT_DAILY_TOKENS": "1000000000000"}
    env = base_env(data, PALISADE_MODELS_FILE=str(models), PALISADE_MODEL_IMPORT_DIRS=str(imports),
                   PALISADE_EMBEDDED_DEVICE="cpu", PALISADE_LOGIN_SLOWDOWN_AFTER="1000", **limits, **extra)
    cli(env, "migrate")
    gws = [GatewayProcess(env, data / f"gw{i}.log") for i in range(2 if args.mode == "production" else 1)]
    for gw in gws:
        gw.start()
    results: dict = {"mode": args.mode, "rate": args.rate, "seconds": args.seconds, "every": args.every}
    try:
        key = create_key(env, "bench")
        approver = login(gws[0], env, "approver")
        shown = httpx.get(f"{gws[0].url}/admin/models/chat", headers=approver, timeout=10).json()
        first = next(a["version"] for a in shown["aliases"] if a["alias"] == "chat")
        new = cli(env, "models", "import", "--name", "chat", "--path", str(imports / "b")).stdout.split()[-1]
        urls = [gw.url for gw in gws]

        baseline = asyncio.run(drive(urls, key, args.rate, args.seconds))
        rss_before = [rss_mb(gw) for gw in gws]

        stop = threading.Event()
        flips: list[str] = []

        def swapper() -> None:
            target = new
            while not stop.wait(args.every):
                if target == new:
                    r = httpx.post(f"{urls[0]}/admin/aliases/chat/promote", json={"version": new}, headers=approver,
                                   timeout=30)
                else:
                    r = httpx.post(f"{urls[0]}/admin/aliases/chat/rollback", headers=approver, timeout=30)
                flips.append(f"{r.status_code}")
                target = first if target == new else new

        before = len(swap_records(env, data))
        thread = threading.Thread(target=swapper, daemon=True)
        thread.start()
        swapping = asyncio.run(drive(urls, key, args.rate, args.seconds))
        stop.set()
        thread.join(60)
        time.sleep(2)
        rss_after = [rss_mb(gw) for gw in gws]
        records = swap_records(env, data)[before:]
        serving_s = [d["learned_after_s"] + d["seconds"] for d in records if d.get("learned_after_s") is not None]
        results.update(
            baseline=baseline, swapping=swapping, swaps=len(flips), refused=[f for f in flips if f != "200"],
            swap_to_serving_s={"mean": sum(serving_s) / len(serving_s) if serving_s else None,
                               "max": max(serving_s) if serving_s else None, "replica_swaps": len(serving_s)},
            p99_ratio=swapping["p99"] / baseline["p99"] if baseline["p99"] else None,
            rss_mb={"before": rss_before, "after": rss_after},
        )
        print(f"\nHot-swap under load ({args.mode}, {len(gws)} replica(s)): {args.rate:.0f} req/s for "
              f"{args.seconds:.0f} s, a swap every {args.every:.1f} s ({len(flips)} swaps)")
        print(f"{'':14}{'p50 ms':>10}{'p99 ms':>10}{'ok':>7}{'errors':>8}  versions")
        for name, r in (("no swaps", baseline), ("during swaps", swapping)):
            print(f"{name:14}{r['p50']:10.1f}{r['p99']:10.1f}{r['ok']:7d}{r['errors']:8d}  {r['versions']}")
        print(f"p99 ratio {results['p99_ratio']:.2f}x (target <= 2x), errors {swapping['errors']} (target 0)")
        sw = results["swap_to_serving_s"]
        if sw["mean"] is not None:
            print(f"approval -> replica serving: mean {sw['mean']:.2f} s, max {sw['max']:.2f} s "
                  f"over {sw['replica_swaps']} replica swaps")
        print(f"RSS per replica before swaps {rss_before} MB, after {rss_after} MB (old weights freed: within 10 %)")
    finally:
        for gw in gws:
            gw.stop()
        if dbname:
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    print(json.dumps({"bench": "hot_swap", **results}, default=str))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

"""Gateway overhead: the full path (auth + ABAC + rate limit + audit + routing) versus the fake upstream alone.

    python -m bench.gateway_overhead [--mode production|embedded] [--rate 300] [--seconds 10]
    python -m bench.gateway_overhead --loadgen /tmp/loadbench --rates 20,300 --profile /tmp/prof [--no-saturation]

With ``--loadgen DIR`` (a built copy of shared/loadbench: ``DIR/bin/loadgen`` and ``DIR/bin/mockupstream``) the
load comes from the Go open-loop generator and the upstream is the Go mock, both pinned to ``--loadgen-cpu``,
and the gateway process (all its threads) is pinned to ``--gateway-cpu``. ``--profile DIR`` records the gateway
with py-spy during each through-the-gateway run and prints where its CPU went, by component.

Both are driven by the same open-loop load generator (requests start on a fixed schedule, so a slow server
cannot slow the offered load down), in the same run. Reports added p50/p95/p99 at the fixed rate, then steps
the rate up to find the highest one a single gateway worker process sustains with p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.pinned import cpu_split
from tests.support.server import GatewayProcess, base_env, create_key, free_port

BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def drive(url: str, headers: dict[str, str], body: dict, rate: float, seconds: float) -> dict:
    """Open-loop load: one request every 1/rate s; returns latencies (ms) and errors."""
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as session:
        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=body) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        return
            except Exception:
                errors += 1
                return
            latencies.append((time.perf_counter() - t0) * 1000)

        # warm the connection pool and the server's caches
        await asyncio.gather(*[one() for _ in range(20)])
        latencies.clear()
        errors = 0
        tasks = []
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"n": n, "ok": len(latencies), "errors": errors, "achieved_rps": len(latencies) / elapsed,
            "p50": pct(latencies, 0.50), "p95": pct(latencies, 0.95), "p99": pct(latencies, 0.99),
            "mean": statistics.fmean(latencies) if latencies else float("nan")}


def start_upstream(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fake_upstreams", "--port", str(port),
                             "--token-delay", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("fake upstream did not start")


def production_env(data: Path) -> dict[str, str]:
    import secrets

    import psycopg

    name = f"palisade_bench_{secrets.token_hex(4)}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return {"PALISADE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
            "PALISADE_REDIS_URL": "redis://127.0.0.1:6379/8", "_DBNAME": name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["production", "embedded"], default="production")
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--rates", default="", help="comma-separated fixed rates (overrides --rate), e.g. 20,300")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-rate", type=float, default=2000.0)
    ap.add_argument("--no-saturation", action="store_true", help="skip the step-up to the sustained rate")
    ap.add_argument("--loadgen", type=Path, default=None, help="built shared/loadbench copy: Go load + Go mock")
    ap.add_argument("--gateway-cpu", default="1", help="with --loadgen: cores for the gateway (taskset)")
    ap.add_argument("--loadgen-cpu", default="0", help="with --loadgen: cores for load generator and mock")
    ap.add_argument("--litellm", type=Path, default=None,
                    help="with --loadgen: a venv with litellm[proxy]==1.108.7; its proxy (one worker, shared/"
                         "loadbench's config, pinned like the gateway) runs at the same rates in the same run")
    ap.add_argument("--log-level", default="warning",
                    help="the gateway's PALISADE_LOG_LEVEL (info: one access-log line per request, the default of a "
                         "deployment)")
    ap.add_argument("--services-cpu", default=None,
                    help="pin the local Postgres and Redis servers to these cores for the run (restored after), as "
                         "if on other hosts; unpinned, they run on the gateway's core when it wakes them")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy the gateway during each gateway run")
    ap.add_argument("--upstream-delay-ms", type=float, default=0.0,
                    help="with --loadgen: the Go mock holds each request this long (a model's time; the audit commit "
                         "overlaps it)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r] or [args.rate]

    up_port = free_port()
    if args.loadgen:
        from bench import pinned

        upstream = pinned.start_mock(args.loadgen, up_port, args.loadgen_cpu, args.upstream_delay_ms)
    else:
        upstream = start_upstream(up_port)
    tmp = Path(tempfile.mkdtemp(prefix="palisade-bench-"))
    models = tmp / "models.yaml"
    models.write_text(f"models:\n  - alias: mock-gpt\n    backend: openai\n    url: http://127.0.0.1:{up_port}/v1\n"
                      f"    upstream_model: gpt-x\n    max_concurrency: 4096\n")
    extra = production_env(tmp) if args.mode == "production" else {}
    dbname = extra.pop("_DBNAME", None)
    # limits stay on the path (reserve + settle on every request) but high enough never to refuse the load
    limits = {"PALISADE_LIMIT_REQUESTS_PER_MIN": "100000000", "PALISADE_LIMIT_TOKENS_PER_MIN": "1000000000000",
              "PALISADE_LIMIT_CONCURRENCY": "100000", "PALISADE_LIMIT_DAILY_TOKENS": "1000000000000"}
    env = base_env(tmp, PALISADE_MODELS_FILE=str(models), PALISADE_HEALTH_INTERVAL_S="30", **limits, **extra)
    env["PALISADE_LOG_LEVEL"] = args.log_level
    if args.mode == "production":
        subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], env=env, check=True, capture_output=True)
    key = create_key(env, "bench", "mock-gpt")
    gw = GatewayProcess(env, tmp / "serve.log").start()
    results: dict = {"mode": args.mode, "rates": rates, "seconds": args.seconds,
                     "driver": "go loadgen (pinned)" if args.loadgen else "aiohttp (same process as nothing else)"}
    restore_services = None
    if args.loadgen:
        pinned.pin(gw.proc.pid, args.gateway_cpu)  # type: ignore[union-attr]
        results["pinning"] = {"gateway": args.gateway_cpu, "loadgen+mock": args.loadgen_cpu,
                              "postgres+redis": args.services_cpu or "not pinned"}
        if args.services_cpu:
            restore_services = pinned.pin_services(args.services_cpu)
    litellm = None
    if args.litellm and args.loadgen:
        litellm = pinned.start_litellm(args.loadgen, args.litellm, up_port, args.gateway_cpu)
    auth = f"Bearer {key}"

    def run(url: str, authorization: str | None, rate: float, seconds: float) -> dict:
        if args.loadgen:
            return pinned.loadgen(args.loadgen, url, authorization, rate, int(seconds), args.loadgen_cpu, BODY)
        headers = {"Authorization": authorization} if authorization else {}
        return asyncio.run(drive(url, headers, BODY, rate, seconds))

    try:
        results["runs"] = []
        for rate in rates:
            direct = run(f"http://127.0.0.1:{up_port}/v1/chat/completions", None, rate, args.seconds)
            spy = None
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                raw = args.profile / f"{args.mode}-{rate:.0f}rps.txt"
                spy = pinned.profile_start(gw.proc.pid, raw, int(args.seconds) + 2)  # type: ignore[union-attr]
            split0 = cpu_split(gw.proc.pid)  # type: ignore[union-attr]
            cpu0 = sum(split0)
            via = run(gw.url + "/v1/chat/completions", auth, rate, args.seconds)
            # every request the gateway served since cpu0: the measured ones plus the warm-up before them
            served = via["achieved_rps"] * args.seconds + (3 * rate if args.loadgen else 20)
            split1 = cpu_split(gw.proc.pid)  # type: ignore[union-attr]
            cpu_ms = (sum(split1) - cpu0) * 1000 / served if served else float("nan")
            sys_ms = (split1[1] - split0[1]) * 1000 / served if served else float("nan")
            if litellm is not None:  # the same rate through LiteLLM, right after (the gateway idle meanwhile)
                lite = run(litellm + "/chat/completions", pinned.LITELLM_AUTH, rate, args.seconds)
            entry = {"rate": rate, "direct": direct, "gateway": via, "gateway_cpu_ms_per_request": round(cpu_ms, 3),
                     "gateway_system_cpu_ms_per_request": round(sys_ms, 3),
                     "added_ms": {q: round(via[q] - direct[q], 3) for q in ("p50", "p95", "p99")}}
            if spy is not None:
                spy.wait(timeout=60)
                entry["cpu_by_component_pct"] = pinned.components(raw) if raw.exists() else {}
            results["runs"].append(entry)
            print(f"\nGateway overhead at {rate:.0f} req/s for {args.seconds:.0f} s ({args.mode} mode, "
                  f"{results['driver']})")
            print(f"{'':10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'errors':>8}{'req/s':>9}")
            for name, r in (("direct", direct), ("gateway", via)):
                print(f"{name:10}{r['p50']:10.2f}{r['p95']:10.2f}{r['p99']:10.2f}{r['errors']:8d}"
                      f"{r['achieved_rps']:9.1f}")
            a = entry["added_ms"]
            print(f"{'added':10}{a['p50']:10.2f}{a['p95']:10.2f}{a['p99']:10.2f}   (target p50 <= 1 ms, p99 <= 5 ms)")
            print(f"gateway CPU per request: {cpu_ms:.2f} ms (process CPU / requests served), of which "
                  f"{sys_ms:.2f} ms in the kernel")
            if litellm is not None:
                entry["litellm"] = lite
                entry["litellm_added_ms"] = {q: round(lite[q] - direct[q], 3) for q in ("p50", "p95", "p99")}
                ratio = entry["litellm_added_ms"]["p50"] / a["p50"] if a["p50"] > 0 else float("nan")
                entry["litellm_ratio_p50"] = round(ratio, 2)
                print(f"{'litellm':10}{lite['p50']:10.2f}{lite['p95']:10.2f}{lite['p99']:10.2f}{lite['errors']:8d}"
                      f"{lite['achieved_rps']:9.1f}")
                print(f"LiteLLM added p50 {entry['litellm_added_ms']['p50']:.2f} ms: Palisade adds {ratio:.1f}x less "
                      f"(target >= 10x)")
            if entry.get("cpu_by_component_pct"):
                print("gateway CPU by component (%):", entry["cpu_by_component_pct"])

        if not args.no_saturation:
            # saturation: highest offered rate with p99 <= 50 ms and no errors, through the gateway
            from bench.pinned import step_up

            sustained, steps = step_up(lambda rate: run(gw.url + "/v1/chat/completions", auth, rate, 5.0), 200.0,
                                       1.5, args.max_rate)
            results["saturation_steps"] = steps
            results["sustained_rps"] = sustained
            print(f"highest rate with p99 <= 50 ms: {sustained:.0f} req/s per worker (target >= 1000)")
    finally:
        if litellm is not None:
            pinned.stop_litellm(args.loadgen)
        if restore_services is not None:
            restore_services()
        gw.stop()
        upstream.terminate()
        if dbname:
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    print(json.dumps({"bench": "gateway_overhead", **results}, default=lambda x: round(x, 3)))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

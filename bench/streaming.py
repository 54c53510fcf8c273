"""Streaming through the gateway versus the upstream alone: added time to first token, and chunk throughput.

    python -m bench.streaming --loadgen DIR [--mode embedded|production] [--chunks 1000] [--seconds 10]

Needs a built copy of shared/loadbench (``DIR/bin/loadgen``, ``DIR/bin/mockupstream``). Two Go mocks on
``--loadgen-cpu`` (default cpu0) with the Go open-loop generator: one streams 3 chunks (the time-to-first-token
run, 20 req/s), one streams ``--chunks`` chunks as fast as it can (the throughput run, 2 req/s: each answer is
one long stream). The gateway (all its threads) runs on ``--gateway-cpu`` (default cpu1), with the full path:
API key, ABAC, limits reserve/settle, audit (stream start before the first byte, completion at the end), routing.

Reported, side by side in one run: time to first byte p50/p99 direct and through the gateway (the added part is
the gateway's TTFT), time to the last byte of a ``--chunks`` stream, and chunks per second through the gateway
over chunks per second direct (target >= 0.9), and the same from each stream's first byte to its last (p50 of the
time to the last byte minus p50 of the time to the first: the chunk rate once the stream flows, apart from the
TTFT, which is its own target; it flatters the gateway somewhat: the gateway holds its first byte until the
stream's start record is durable, and an upstream this fast has sent part of the stream by then). Direct is
measured twice: with the generator on the mock's core
(as in the gateway run; while the generator waits for the core the mock writes the whole stream, which then
arrives in a few reads) and from the other core (where the gateway reads it: the writes arrive as they are made,
paced by the mock). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import pinned
from bench.gateway_overhead import production_env
from tests.support.server import GatewayProcess, base_env, create_key, free_port


def run_loadgen(loadbench: Path, url: str, auth: str | None, rate: float, seconds: int, cpu: str,
                model: str = "mock-gpt") -> dict:
    out = Path(f"/tmp/palisade-stream-{time.time_ns()}.json")
    body = {"model": model, "messages": [{"role": "user", "content": "stream please"}], "stream": True,
            "max_tokens": 2000}
    args = ["taskset", "-c", cpu, str(loadbench / "bin" / "loadgen"), "-url", url, "-body", json.dumps(body),
            "-rate", str(rate), "-duration", f"{seconds}s", "-warmup", "2s", "-timeout", "30s", "-expect", "[DONE]",
            "-out", str(out), "-summary"]
    if auth:
        args += ["-H", f"Authorization: {auth}"]
    subprocess.run(args, capture_output=True, text=True, check=True)
    full = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    return full


def pick(full: dict, key: str) -> dict:
    """p50/p99 of one latency series from the generator's full result (keys vary a little between versions)."""
    s = full.get(key) or {}
    return {"p50": s.get("p50"), "p99": s.get("p99"), "n": s.get("n")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loadgen", type=Path, required=True)
    ap.add_argument("--mode", choices=["production", "embedded"], default="embedded")
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--gateway-cpu", default="1")
    ap.add_argument("--loadgen-cpu", default="0")
    args = ap.parse_args()

    short_port, long_port = free_port(), free_port()
    mocks = [pinned.start_mock(args.loadgen, short_port, args.loadgen_cpu)]
    mocks.append(subprocess.Popen(
        ["taskset", "-c", args.loadgen_cpu, str(args.loadgen / "bin" / "mockupstream"), "-addr",
         f"127.0.0.1:{long_port}", "-chunks", str(args.chunks)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    tmp = Path(tempfile.mkdtemp(prefix="palisade-stream-"))
    models = tmp / "models.yaml"
    models.write_text("models:\n" + "".join(
        f"  - alias: {alias}\n    backend: openai\n    url: http://127.0.0.1:{port}/v1\n    upstream_model: gpt-x\n"
        f"    max_concurrency: 4096\n" for alias, port in (("mock-gpt", short_port), ("long", long_port))))
    extra = production_env(tmp) if args.mode == "production" else {}
    extra.pop("_DBNAME", None)
    limits = {"PALISADE_LIMIT_REQUESTS_PER_MIN": "100000000", "PALISADE_LIMIT_TOKENS_PER_MIN": "1000000000000",
              "PALISADE_LIMIT_CONCURRENCY": "100000", "PALISADE_LIMIT_DAILY_TOKENS": "1000000000000",
              "PALISADE_MAX_TOKENS_CAP": "100000"}
    env = base_env(tmp, PALISADE_MODELS_FILE=str(models), PALISADE_HEALTH_INTERVAL_S="30", **limits, **extra)
    if args.mode == "production":
        subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], env=env, check=True, capture_output=True)
    key = create_key(env, "bench", "mock-gpt", "long")
    gw = GatewayProcess(env, tmp / "serve.log").start()
    pinned.pin(gw.proc.pid, args.gateway_cpu)  # type: ignore[union-attr]
    auth = f"Bearer {key}"
    try:
        ttft_direct = run_loadgen(args.loadgen, f"http://127.0.0.1:{short_port}/v1/chat/completions", None, 20,
                                  args.seconds, args.loadgen_cpu)
        ttft_gw = run_loadgen(args.loadgen, gw.url + "/v1/chat/completions", auth, 20, args.seconds,
                              args.loadgen_cpu)
        # the long streams: the alias "long" goes to the mock that streams --chunks chunks
        long_direct = run_loadgen(args.loadgen, f"http://127.0.0.1:{long_port}/v1/chat/completions", None, 2,
                                  args.seconds, args.loadgen_cpu)
        # the same, read from the other core (the gateway's, idle now): the gateway reads the mock from another
        # core, where the mock's writes arrive as it makes them, not batched up while the reader waits its turn
        long_direct_x = run_loadgen(args.loadgen, f"http://127.0.0.1:{long_port}/v1/chat/completions", None, 2,
                                    args.seconds, args.gateway_cpu)
        long_gw = run_loadgen(args.loadgen, gw.url + "/v1/chat/completions", auth, 2, args.seconds,
                              args.loadgen_cpu, model="long")
    finally:
        gw.stop()
        for m in mocks:
            m.terminate()
    d, g = pick(ttft_direct, "ttfb_ms"), pick(ttft_gw, "ttfb_ms")
    ld, lg = pick(long_direct, "latency_ms_ok"), pick(long_gw, "latency_ms_ok")
    lx = pick(long_direct_x, "latency_ms_ok")
    added = {q: round(g[q] - d[q], 3) for q in ("p50", "p99") if g[q] is not None and d[q] is not None}
    cps_direct = args.chunks / (ld["p50"] / 1000) if ld["p50"] else None
    cps_gw = args.chunks / (lg["p50"] / 1000) if lg["p50"] else None
    ratio = cps_gw / cps_direct if cps_gw and cps_direct else None
    cps_x = args.chunks / (lx["p50"] / 1000) if lx["p50"] else None
    ratio_x = cps_gw / cps_x if cps_gw and cps_x else None
    # the same streams from their first byte to their last: the rate at which chunks flow once the stream has
    # started (the time before the first byte is the TTFT above, reported there)
    body = {name: round(lat["p50"] - pick(full, "ttfb_ms")["p50"], 3)
            for name, lat, full in (("direct", ld, long_direct), ("direct_other_core", lx, long_direct_x),
                                    ("gateway", lg, long_gw))
            if lat["p50"] is not None and pick(full, "ttfb_ms")["p50"] is not None}
    body_ratio = {k: round(body[k] / body["gateway"], 3) for k in ("direct", "direct_other_core")
                  if body.get(k) and body.get("gateway")}
    print(f"\nStreaming ({args.mode} mode; gateway on cpu {args.gateway_cpu}, Go mock + loadgen on cpu "
          f"{args.loadgen_cpu})")
    print(f"time to first byte, 3-chunk streams at 20 req/s: direct p50 {d['p50']:.2f} ms p99 {d['p99']:.2f} ms; "
          f"gateway p50 {g['p50']:.2f} ms p99 {g['p99']:.2f} ms; added p50 {added.get('p50')} ms "
          f"(target <= 1 ms)")
    print(f"{args.chunks}-chunk streams at 2 req/s, time to last byte p50: direct {ld['p50']:.1f} ms, "
          f"gateway {lg['p50']:.1f} ms -> {cps_direct:,.0f} vs {cps_gw:,.0f} chunks/s, ratio {ratio:.2f} "
          f"(target >= 0.9)")
    print(f"  direct, read from the gateway's core instead: {lx['p50']:.1f} ms -> {cps_x:,.0f} chunks/s; gateway "
          f"÷ that: {ratio_x:.2f}")
    print(f"  first to last byte of those streams, p50: direct {body.get('direct')} ms (other core "
          f"{body.get('direct_other_core')} ms), gateway {body.get('gateway')} ms -> chunk rate once streaming, "
          f"gateway ÷ direct: {body_ratio.get('direct')} (÷ other core: {body_ratio.get('direct_other_core')})")
    print(json.dumps({"bench": "streaming", "mode": args.mode, "ttfb_direct": d, "ttfb_gateway": g,
                      "ttft_added_ms": added, "chunks": args.chunks, "long_direct_ms": ld, "long_gateway_ms": lg,
                      "long_direct_other_core_ms": lx,
                      "chunks_per_s": {"direct": cps_direct, "direct_other_core": cps_x, "gateway": cps_gw},
                      "ratio": ratio, "ratio_other_core": ratio_x,
                      "first_to_last_byte_ms": body, "ratio_once_streaming": body_ratio,
                      "errors": {"ttft": ttft_gw.get("errors"), "long": long_gw.get("errors")}}))


if __name__ == "__main__":
    main()

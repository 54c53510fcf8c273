"""Batch predictions vs the same lines as concurrent interactive requests, and interactive latency while a batch
runs (PERFORMANCE.md: >= 1x throughput; interactive p99 unhurt).

    python -m bench.batch_throughput [--quick] [--model builtin:smollm2] [--lines N] [--max-tokens M]
                                     [--concurrency C] [--probes P]

One real `palisade serve` (embedded backend) and one real `palisade worker` (the batch runner, embedded backend in
its own process), both from the same data dir. In one run:
  1. interactive: the N lines sent as chat completions, C at a time (the batch's own concurrency) -> lines/s, tok/s
  2. batch: the same N lines uploaded as a file, one batch, polled to `completed` -> lines/s, tok/s (create ->
     completed, validation and output file included)
  3. interactive latency: P single requests one after another with nothing else running, then P more while a
     second copy of the batch runs -> p50/p99 of each.
``--quick`` uses a tiny random model (built locally) and small counts: a smoke run of the machinery, not figures.
On a 2-core machine the gateway and the worker share the cores, so (3) measures CPU contention as much as
priority; the batch's lower priority matters where the model runs on an accelerator or a separate server.
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

import httpx

from tests.support.server import ROOT, GatewayProcess, base_env, create_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["a lighthouse keeper", "the history of bread", "how rainbows form", "a robot learning to paint",
          "why the sky is blue", "a trip to the mountains", "the rules of chess", "a cat who runs a bakery"]


def lines(n: int, max_tokens: int, model: str) -> list[dict]:
    return [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "max_tokens": max_tokens, "temperature": 0,
                      "messages": [{"role": "user", "content": f"Write about {TOPICS[i % len(TOPICS)]} ({i})."}]}}
            for i in range(n)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


async def interactive(url: str, key: str, reqs: list[dict], concurrency: int) -> tuple[float, int, list[float]]:
    sem = asyncio.Semaphore(concurrency)
    tokens, lat = 0, []
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
        async def one(body: dict) -> None:
            nonlocal tokens
            async with sem:
                t = time.perf_counter()
                r = await c.post("/v1/chat/completions", json=body)
                lat.append(time.perf_counter() - t)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(x["body"]) for x in reqs))
        return time.perf_counter() - t0, tokens, lat


def run_batch(url: str, key: str, reqs: list[dict], wait: bool = True) -> tuple[float, int, str]:
    c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
    data = b"".join(json.dumps(x).encode() + b"\n" for x in reqs)
    f = c.post("/v1/files", files={"file": ("bench.jsonl", data)}, data={"purpose": "batch"}).json()
    t0 = time.perf_counter()
    b = c.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                    "completion_window": "24h"}).json()
    if not wait:
        return 0.0, 0, b["id"]
    b = wait_batch(c, b["id"])
    elapsed = time.perf_counter() - t0
    out = c.get(f"/v1/files/{b['output_file_id']}/content").content.splitlines()
    tokens = sum(json.loads(x)["response"]["body"]["usage"]["completion_tokens"] for x in out if x.strip())
    return elapsed, tokens, b["id"]


def wait_batch(c: httpx.Client, batch_id: str) -> dict:
    while True:
        b = c.get(f"/v1/batches/{batch_id}").json()
        if b["status"] in ("completed", "failed", "cancelled", "expired"):
            if b["status"] != "completed":
                raise SystemExit(f"batch ended {b['status']}: {b.get('errors')}")
            return b
        time.sleep(0.1)


async def probes(url: str, key: str, model: str, n: int, max_tokens: int) -> list[float]:
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hello."}]}
    lat = []
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
        for _ in range(n):
            t = time.perf_counter()
            (await c.post("/v1/chat/completions", json=body)).raise_for_status()
            lat.append(time.perf_counter() - t)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny local model, small counts (smoke run)")
    ap.add_argument("--model", default="builtin:smollm2", help="embedded model dir or builtin:smollm2")
    ap.add_argument("--lines", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8, help="the batch's concurrency and the interactive one")
    ap.add_argument("--probes", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="palisade-bench-batch-"))
    model_dir = args.model
    if args.quick:
        from tests.support.tiny_model import make_tiny_model

        model_dir = str(make_tiny_model(tmp / "tiny"))
        args.lines, args.max_tokens, args.probes = min(args.lines, 16), min(args.max_tokens, 8), min(args.probes, 10)
    models = tmp / "models.yaml"
    model_line = f"model: {model_dir}" if not model_dir.startswith("builtin:") else "model: builtin:smollm2"
    models.write_text(f"models:\n  - alias: bench\n    backend: embedded\n    {model_line}\n")
    env = base_env(tmp / "data", PALISADE_MODELS_FILE=str(models), PALISADE_SERVE_WORKER="false",
                   PALISADE_BATCH_CONCURRENCY=str(args.concurrency), PALISADE_LIMIT_REQUESTS_PER_MIN="100000",
                   PALISADE_LIMIT_TOKENS_PER_MIN="100000000", PALISADE_LIMIT_CONCURRENCY="1000")
    key = create_key(env, "bench")
    worker_log = open(tmp / "worker.log", "ab")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--queues", "cpu"], env=env, cwd=ROOT,
                              stdout=worker_log, stderr=subprocess.STDOUT)
    gw = GatewayProcess(env, tmp / "serve.log").start(timeout=600)
    try:
        reqs = lines(args.lines, args.max_tokens, "bench")
        # warm both processes' models (the worker loads its copy on the first batch line)
        asyncio.run(interactive(gw.url, key, reqs[:2], 2))
        run_batch(gw.url, key, reqs[:2])
        i_s, i_tok, _ = asyncio.run(interactive(gw.url, key, reqs, args.concurrency))
        b_s, b_tok, _ = run_batch(gw.url, key, reqs)
        alone = asyncio.run(probes(gw.url, key, "bench", args.probes, args.max_tokens))
        _, _, bid = run_batch(gw.url, key, reqs, wait=False)
        during = asyncio.run(probes(gw.url, key, "bench", args.probes, args.max_tokens))
        wait_batch(httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60), bid)
    finally:
        gw.stop()
        worker.terminate()
        worker.wait(timeout=30)
        worker_log.close()
    n = args.lines
    rows = [("interactive, concurrent", n / i_s, i_tok / i_s), ("batch (worker)", n / b_s, b_tok / b_s)]
    print(f"{'mode':<26}{'lines/s':>10}{'tok/s':>10}")
    for name, lps, tps in rows:
        print(f"{name:<26}{lps:>10.2f}{tps:>10.1f}")
    print(f"batch / interactive throughput: {(n / b_s) / (n / i_s):.2f}x")
    print(f"{'interactive latency':<26}{'p50 ms':>10}{'p99 ms':>10}")
    for name, lat in (("alone", alone), ("while a batch runs", during)):
        print(f"{name:<26}{statistics.median(lat) * 1000:>10.1f}{pct(lat, 0.99) * 1000:>10.1f}")
    print(json.dumps({
        "bench": "batch_throughput", "quick": args.quick, "model": "tiny" if args.quick else args.model,
        "lines": n, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        "interactive_lines_per_s": round(n / i_s, 3), "interactive_tokens_per_s": round(i_tok / i_s, 2),
        "batch_lines_per_s": round(n / b_s, 3), "batch_tokens_per_s": round(b_tok / b_s, 2),
        "throughput_ratio": round(i_s / b_s, 3),
        "interactive_p50_ms_alone": round(statistics.median(alone) * 1000, 1),
        "interactive_p99_ms_alone": round(pct(alone, 0.99) * 1000, 1),
        "interactive_p50_ms_during_batch": round(statistics.median(during) * 1000, 1),
        "interactive_p99_ms_during_batch": round(pct(during, 0.99) * 1000, 1),
    }))


if __name__ == "__main__":
    main()

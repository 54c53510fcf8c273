"""`palisade serve --workers N`: does the sustained rate grow with the worker processes?

    python -m bench.worker_scaling --loadgen DIR --workers 1,2,4 --gateway-cpus 2-5 --loadgen-cpus 0,1

Production mode (Postgres + Redis: the state every worker shares), the full path (API key, ABAC, limits
reserve/settle, audit, routing), the Go open-loop generator and the Go mock upstream of shared/loadbench
(``DIR/bin/loadgen``, ``DIR/bin/mockupstream``) on ``--loadgen-cpus``, the gateway (its supervisor and every
worker, which inherit the affinity) on ``--gateway-cpus``. For each worker count, in the same run:

- gateway CPU per request at ``--rate`` (all its processes, from /proc): work added by running several workers
  (cross-process contention: the audit chain's head row, Redis) shows here even where the cores are too few to
  show it as throughput;
- the highest offered rate held with p99 <= 50 ms, no errors and >= 95 % of the rate achieved (steps of x1.25);
- scaling: that rate over N x the one-worker rate, N counted only up to the gateway's cores (target >= 0.8).

State the machine's cores with the figures. On a 2-core machine (one for the generator) several workers share
one core, so only the CPU per request says something there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import pinned
from bench.gateway_overhead import BODY, production_env
from tests.support.server import ROOT, GatewayProcess, base_env, create_key, free_port


class Served(GatewayProcess):
    """``palisade serve --workers N`` under ``taskset``: the supervisor and the workers it spawns share the cores."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int, cpus: str) -> None:
        super().__init__(env, log_path)
        self.workers, self.cpus = workers, cpus

    def launch(self) -> Served:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.cpus, sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self


def tree(pid: int) -> list[int]:
    """The process and all its descendants (the uvicorn supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


def cpu_of(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            total += pinned.cpu_seconds(p)
        except OSError:
            pass  # gone meanwhile
    return total


def cores(spec: str) -> int:
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loadgen", type=Path, required=True)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--gateway-cpus", default="1", help="cores for the gateway's processes (taskset list)")
    ap.add_argument("--loadgen-cpus", default="0", help="cores for the Go generator and mock")
    ap.add_argument("--rate", type=float, default=300.0, help="the fixed rate of the CPU-per-request run")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--start-rate", type=float, default=200.0)
    ap.add_argument("--max-rate", type=float, default=50_000.0)
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    up_port = free_port()
    mock = pinned.start_mock(args.loadgen, up_port, args.loadgen_cpus)
    tmp = Path(tempfile.mkdtemp(prefix="palisade-workers-"))
    models = tmp / "models.yaml"
    models.write_text(f"models:\n  - alias: mock-gpt\n    backend: openai\n    url: http://127.0.0.1:{up_port}/v1\n"
                      f"    upstream_model: gpt-x\n    max_concurrency: 100000\n")
    extra = production_env(tmp)
    dbname = extra.pop("_DBNAME")
    limits = {"PALISADE_LIMIT_REQUESTS_PER_MIN": "1000000000", "PALISADE_LIMIT_TOKENS_PER_MIN": "1000000000000",
              "PALISADE_LIMIT_CONCURRENCY": "1000000", "PALISADE_LIMIT_DAILY_TOKENS": "1000000000000"}
    env = base_env(tmp, PALISADE_MODELS_FILE=str(models), PALISADE_HEALTH_INTERVAL_S="30", **limits, **extra)
    subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], env=env, check=True, capture_output=True)
    auth = f"Bearer {create_key(env, 'bench', 'mock-gpt')}"
    gateway_cores = cores(args.gateway_cpus)
    results: dict = {"machine_cores": os.cpu_count(), "gateway_cpus": args.gateway_cpus,
                     "loadgen_cpus": args.loadgen_cpus, "runs": []}
    print(f"machine: {os.cpu_count()} cores; gateway on {args.gateway_cpus} ({gateway_cores}), Go generator + mock "
          f"on {args.loadgen_cpus}; production mode")
    try:
        for n in counts:
            gw = Served(env, tmp / f"serve-{n}.log", n, args.gateway_cpus).start()
            try:
                url = gw.url + "/v1/chat/completions"
                before = cpu_of(gw.proc.pid)  # type: ignore[union-attr]
                fixed = pinned.loadgen(args.loadgen, url, auth, args.rate, args.seconds, args.loadgen_cpus, BODY)
                served = fixed["achieved_rps"] * args.seconds + 3 * args.rate  # + the generator's warm-up
                cpu_ms = (cpu_of(gw.proc.pid) - before) * 1000 / served  # type: ignore[union-attr]

                def at(rate: float, url: str = url) -> dict:
                    return pinned.loadgen(args.loadgen, url, auth, rate, args.seconds, args.loadgen_cpus, BODY)

                sustained, steps = pinned.step_up(at, args.start_rate, 1.25, args.max_rate, f"{n} worker(s): ")
            finally:
                gw.stop()
            run = {"workers": n, "cpu_ms_per_request": round(cpu_ms, 3), "p50_at_rate": fixed["p50"],
                   "p99_at_rate": fixed["p99"], "sustained_rps": sustained, "steps": steps}
            results["runs"].append(run)
            print(f"{n} worker(s): {cpu_ms:.2f} ms CPU per request at {args.rate:.0f}/s (p50 {fixed['p50']:.2f} ms); "
                  f"sustained {sustained:.0f} req/s")
            time.sleep(1)
    finally:
        mock.terminate()
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    one = next((r for r in results["runs"] if r["workers"] == 1), None)
    for r in results["runs"]:
        if one and one["sustained_rps"]:
            usable = min(r["workers"], gateway_cores)
            r["scaling"] = round(r["sustained_rps"] / (usable * one["sustained_rps"]), 3)
            r["cpu_per_request_vs_one"] = round(r["cpu_ms_per_request"] / one["cpu_ms_per_request"], 3)
            print(f"{r['workers']} worker(s) on {usable} usable core(s): scaling {r['scaling']:.2f} of ideal "
                  f"(target >= 0.8); CPU per request x{r['cpu_per_request_vs_one']:.2f} of one worker's")
    print(json.dumps({"bench": "worker_scaling", **results}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

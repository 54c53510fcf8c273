"""Pinned load and per-component profiles for bench.gateway_overhead (``--loadgen DIR``, ``--profile DIR``).

The Go tools of shared/loadbench (open-loop generator, mock upstream) run on one core and the gateway on the
other, so the load generator does not steal the gateway's CPU. py-spy samples the gateway (on-CPU samples only,
every thread) while it is under load; :func:`components` turns the collapsed stacks into "where the gateway's CPU
went", each sample charged to the innermost frame that belongs to a known component.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

#: (component, start of a frame's module path) - the first match from the innermost frame outwards wins;
#: py-spy prints frames as ``function (package/module.py:line)``
COMPONENTS: list[tuple[str, str]] = [
    ("audit", "gateway/audit/"),
    ("limits", "gateway/limits/"),
    ("authn", "gateway/authn/"),
    ("authz", "gateway/authz/"),
    ("authz", "casbin/"),
    ("upstream client", "gateway/inference/openai_upstream"),
    ("inference pipeline", "gateway/inference/"),
    ("routes + schemas", "gateway/api/"),
    ("request-id/access log", "gateway/middleware"),
    ("logging", "structlog/"),
    ("logging", "logging/"),
    ("metrics", "prometheus_client/"),
    ("redis client", "redis/"),
    ("http client", "httpx/"),
    ("http client", "httpcore/"),
    ("http client", "h11/"),
    ("http client", "aiohttp/"),
    ("postgres", "psycopg"),
    ("sqlalchemy", "sqlalchemy/"),
    ("sqlite", "aiosqlite/"),
    ("msgspec", "msgspec"),
    ("litestar", "litestar/"),
    ("server", "uvicorn/"),
    ("server", "granian/"),
    ("server", "httptools/"),
    ("server", "uvloop/"),
    ("gateway other", "gateway/"),
    ("asyncio", "asyncio/"),
    ("import/metadata", "importlib/"),
    ("import/metadata", "email/"),
]


def pin(pid: int, cpus: str) -> None:
    """Pin a process and every thread it already has (taskset -a)."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True)


def pin_services(cpus: str) -> Callable[[], None]:
    """Pin the local Postgres and Redis servers (every process of theirs: postmaster, backends, redis-server) to
    ``cpus`` for a run, as if they ran on other hosts: left unpinned on a 2-core machine, a backend the gateway wakes
    often runs on the gateway's own core and preempts it mid-request. Returns what restores their affinity."""
    found = subprocess.run(["pgrep", "-f", "postgres|redis-server"], capture_output=True, text=True).stdout.split()
    before: dict[int, set[int]] = {}
    for pid in map(int, found):
        with contextlib.suppress(OSError):
            before[pid] = os.sched_getaffinity(pid)
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), {int(c) for c in cpus.split(",")})

    def restore() -> None:
        for pid, cores in before.items():
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(tid), cores)
        # backends started meanwhile inherited the pinned postmaster's affinity and end with their connections

    return restore


LITELLM_AUTH = "Bearer sk-bench-master-key-0001"  # shared/loadbench/litellm's master key (a local benchmark's)
LITELLM_PORT = 4000


def start_litellm(loadbench: Path, venv: Path, mock_port: int, cpu: str) -> str:
    """LiteLLM's proxy (shared/loadbench/litellm: one worker, its production settings) in front of the mock on
    ``mock_port``, pinned to ``cpu``; returns its OpenAI base URL."""
    env = {**os.environ, "LITELLM_VENV": str(venv), "LITELLM_PORT": str(LITELLM_PORT), "LITELLM_CPU": cpu,
           "MOCK_PORT": str(mock_port)}
    subprocess.run(["bash", str(loadbench / "litellm" / "start_litellm.sh")], env=env, check=True)
    return f"http://127.0.0.1:{LITELLM_PORT}/v1"


def stop_litellm(loadbench: Path) -> None:
    subprocess.run(["bash", str(loadbench / "litellm" / "stop_litellm.sh")], check=False, capture_output=True)


def start_mock(loadbench: Path, port: int, cpu: str, delay_ms: float = 0.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, str(loadbench / "bin" / "mockupstream"), "-addr", f"127.0.0.1:{port}",
         "-delay-ms", str(delay_ms)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("mock upstream did not start")


def loadgen(
    loadbench: Path, url: str, auth: str | None, rate: float, seconds: int, cpu: str, body: dict, warmup_s: int = 3
) -> dict:
    """One open-loop run of the Go generator; its summary plus the full result's extras."""
    out = Path(f"/tmp/palisade-loadgen-{time.time_ns()}.json")
    args = ["taskset", "-c", cpu, str(loadbench / "bin" / "loadgen"), "-url", url, "-body", json.dumps(body),
            "-rate", str(rate), "-duration", f"{seconds}s", "-warmup", f"{warmup_s}s", "-timeout", "10s",
            "-expect", "usage", "-summary", "-out", str(out)]
    if auth:
        args += ["-H", f"Authorization: {auth}"]
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    return {"p50": summary["p50_ms"], "p95": summary["p95_ms"], "p99": summary["p99_ms"],
            "errors": summary["errors"], "achieved_rps": summary["achieved_rps"], "ok": None}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc: CPU per request does not depend on how
    busy the rest of the machine is, unlike latency."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all threads: system time is the kernel's share (syscalls, and on
    loopback the receiving side's TCP work done in the sender's context)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def profile_start(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("py-spy not installed: no profile (pip install py-spy)")
        return None
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw",
                             "-o", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: a sample whose innermost Python frame is the event loop's own run call: uvloop's C code, which is mostly the
#: idle wait in epoll (py-spy cannot tell that wait from work there) plus socket I/O and the HTTP parser
LOOP_IDLE = "event loop (C: mostly idle)"


def components(collapsed: Path) -> dict[str, float]:
    """Share of py-spy's samples per component (innermost matching frame), from its raw output. Samples in the
    event loop's C code are reported apart (``LOOP_IDLE``): with uvloop they are mostly idle time, so the shares
    of the other components are of the rest, the Python work."""
    counts: Counter[str] = Counter()
    total = loop = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith("Runner.run (asyncio/runners.py") or frames[-1].startswith("run (uvloop"):
            loop += int(n)
            continue
        total += int(n)
        name = "other"
        for frame in reversed(frames):
            hit = next((c for c, n in COMPONENTS if f"({n}" in frame or f"/{n}" in frame), None)
            if hit:
                name = hit
                break
        counts[name] += int(n)
    shares = {k: round(100 * v / total, 1) for k, v in counts.most_common()} if total else {}
    if loop:
        shares[LOOP_IDLE + ", % of all samples"] = round(100 * loop / (loop + total), 1)
    return shares


def step_up(run: Callable[[float], dict], start: float, factor: float, max_rate: float,
            label: str = "") -> tuple[float, list[dict]]:
    """The highest offered rate held with p99 <= 50 ms, no errors and >= 95 % of it achieved: ``run(rate)`` at
    ``start``, ``start * factor``, ... until one fails (or ``max_rate``). Returns it and every step's figures."""
    sustained, steps, rate = 0.0, [], start
    while rate <= max_rate:
        r = run(rate)
        steps.append({"rate": rate, "p99": round(r["p99"], 2), "achieved": round(r["achieved_rps"], 1),
                      "errors": r["errors"]})
        print(f"  {label}offered {rate:8.0f}/s  achieved {r['achieved_rps']:8.1f}/s  p99 {r['p99']:8.2f} ms  "
              f"errors {r['errors']}")
        if r["p99"] > 50 or r["errors"] or r["achieved_rps"] < 0.95 * rate:
            break
        sustained = rate
        rate *= factor
    return sustained, steps

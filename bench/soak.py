"""Soak: a steady mixed load (streaming and non-streaming) for minutes; nothing may drift or fail.

    python -m bench.soak [--minutes 10] [--rate 300] [--stream-share 0.3] [--mode production|embedded]

Open-loop load at ``--rate`` req/s (requests start on a fixed schedule) against one gateway in front of the fake
upstream. Every 10 s it samples the gateway process's RSS and classifies its open file descriptors (from
/proc/PID/fd and the TCP and unix socket tables): inbound client sockets (local port = the gateway's), outbound
sockets by peer (the fake upstream, Postgres 5432, Redis 6379, other), listening sockets, unix sockets, files,
pipes/eventfd/epoll, other. The load generator's pool is unbounded: a latency spike (more requests in flight at
once) opens more keep-alive connections to the gateway, and since aiohttp reuses pooled connections in turn
(oldest first) every one of them is used again well within uvicorn's 5 s keep-alive, so the inbound count
ratchets up to the highest concurrency seen and stays there while the load runs. The gateway's own upstream pool
(aiohttp too, 4 s keep-alive) does the same. Neither is a leak: at the end of the load the load generator closes
its connections and the bench samples again once both keep-alive timeouts have run out. Redis connections are a
pool too: the limiter's blocking pool keeps every connection it opened, up to its bound, so they are checked
against that bound rather than counted with the steady fds. The classification is printed each minute, at
the end of the load and after it; pass criteria, checked at the end and printed as a table plus one JSON line:

- zero errors (every answer 200; every stream ends with ``[DONE]``);
- RSS flat: at most 5 % growth from the end of the first minute (warm-up) to the end of the load;
- fds flat: the fds other than inbound client, upstream and Redis sockets (Postgres connections, files, pipes,
  ...) grow by at most 5 from the end of the first minute to the end of the load and to after the cool-down;
- Redis bounded: never more Redis sockets than the limiter's pool bound plus 8 (the shared client's few);
- sockets drained: once the load generator closed its connections and the keep-alives ran out, at most 2 inbound
  and at most 2 upstream sockets are left (a server-side socket kept open, e.g. in CLOSE_WAIT, would show here);
- ``palisade audit verify`` passes over the whole run's records.

Exit status 1 when a criterion fails. ``--minutes 1 --rate 50`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from gateway.services import LIMITER_REDIS_CONNECTIONS
from tests.support.server import GatewayProcess, base_env, cli, create_key, free_port

BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "ping with a few words"}], "max_tokens": 8}
SAMPLE_EVERY_S = 10.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# The gateway's fds by kind. Inbound client sockets follow the load generator's pool (a keep-alive connection per
# request in flight at its busiest; the gateway closes one left idle for uvicorn's 5 s), upstream sockets the
# gateway's pool (an idle one kept 4 s); everything else should stay put under a steady load.
FD_CLASSES = ("inbound", "upstream", "postgres", "redis", "tcp_other", "listen", "unix", "file", "pipe_anon",
              "other")
PEER_PORTS = {5432: "postgres", 6379: "redis"}
TCP_LISTEN, TCP_CLOSE_WAIT = "0A", "08"
UVICORN_KEEPALIVE_S = 5.0  # uvicorn's default timeout_keep_alive (gateway/cli/server.py leaves it)
UPSTREAM_KEEPALIVE_S = 4.0  # gateway/inference/openai_upstream.py _KEEPALIVE_S
# after the load generator closed its connections: both keep-alive timeouts, and aiohttp's cleanup pass for idle
# pooled connections runs once per keep-alive period, so an idle one may live up to twice that
COOLDOWN_S = max(UVICORN_KEEPALIVE_S, 2 * UPSTREAM_KEEPALIVE_S) + 4.0
STABLE_FD_BOUND = 5  # fds other than inbound/upstream sockets: growth allowed from minute 1 (pool jitter, a log)
DRAINED_BOUND = 2  # inbound / upstream sockets left once the load generator closed and the keep-alives ran out
# Redis sockets: the limiter's blocking pool (gateway.services.LIMITER_REDIS_CONNECTIONS) grows to the busiest
# moment and keeps its connections; the shared client holds a few (pub/sub subscriber, change feed, revocations)
REDIS_BOUND = LIMITER_REDIS_CONNECTIONS + 8


def _tcp_sockets(pid: int) -> dict[int, tuple[int, int, str]]:
    """Socket inode → (local port, remote port, state) from the process's network namespace's TCP tables."""
    out: dict[int, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            inode = int(f[9])
            if inode:  # 0: TIME_WAIT and the like, owned by no fd
                out[inode] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), f[3])
    return out


def _unix_sockets(pid: int) -> set[int]:
    try:
        lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except FileNotFoundError:
        return set()
    return {int(line.split()[6]) for line in lines}


def classify_fds(pid: int, listen_port: int, upstream_port: int) -> dict:
    """The process's open fds by kind (``FD_CLASSES``), their total, inbound sockets the client closed but the
    gateway did not (CLOSE_WAIT), and the paths of regular files."""
    fd_dir = f"/proc/{pid}/fd"
    links: list[tuple[str, str]] = []
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            links.append((fd, os.readlink(f"{fd_dir}/{fd}")))
    tcp, unix = _tcp_sockets(pid), _unix_sockets(pid)
    counts = dict.fromkeys(FD_CLASSES, 0)
    close_wait = 0
    files: list[str] = []
    for fd, link in links:
        if link.startswith("socket:["):
            inode = int(link[8:-1])
            if inode in tcp:
                lport, rport, state = tcp[inode]
                if state == TCP_LISTEN:
                    kind = "listen"
                elif lport == listen_port:
                    kind = "inbound"
                    close_wait += state == TCP_CLOSE_WAIT
                elif rport == upstream_port:
                    kind = "upstream"
                else:
                    kind = PEER_PORTS.get(rport, "tcp_other")
            elif inode in unix:
                kind = "unix"
            else:
                try:
                    if os.readlink(f"{fd_dir}/{fd}") != link:
                        continue  # closed (and the number reused) between the listing and the tables
                except FileNotFoundError:
                    continue
                kind = "other"  # UDP, netlink, ...
        elif link.startswith(("pipe:", "anon_inode:")):
            kind = "pipe_anon"  # pipes, eventfd, epoll, signalfd, timerfd
        elif link.startswith("/"):
            kind = "file"
            files.append(link)
        else:
            kind = "other"
        counts[kind] += 1
    return {**counts, "fds": sum(counts.values()), "inbound_close_wait": close_wait, "files": sorted(files)}


def stable_fds(sample: dict) -> int:
    """Fds that should not follow the load: all but inbound client sockets and the pooled upstream and Redis
    sockets (the Redis ones have their own bound, REDIS_BOUND)."""
    return sample["fds"] - sample["inbound"] - sample["upstream"] - sample["redis"]


def error_message(body: bytes) -> str:
    """The gateway's error message (``{"error": {"message": ...}}``), so failures of one status stay apart."""
    try:
        return str(json.loads(body)["error"]["message"])[:60]
    except (ValueError, KeyError, TypeError):
        return body[:60].decode(errors="replace")


COLUMNS = (("in", "inbound"), ("up", "upstream"), ("pg", "postgres"), ("redis", "redis"), ("tcp?", "tcp_other"),
           ("lstn", "listen"), ("unix", "unix"), ("file", "file"), ("pipe", "pipe_anon"), ("oth", "other"))


def header() -> str:
    return (f"{'t (s)':>8} {'phase':<12}{'RSS MiB':>8}{'fds':>5}{'stbl':>5}"
            + "".join(f"{name:>6}" for name, _ in COLUMNS) + f"{'in-CW':>6}")


def row(s: dict) -> str:
    return (f"{s['t']:8.0f} {s['phase']:<12}{s['rss_kib'] / 1024:8.1f}{s['fds']:5d}{stable_fds(s):5d}"
            + "".join(f"{s[key]:6d}" for _, key in COLUMNS) + f"{s['inbound_close_wait']:6d}")


async def drive(url: str, key: str, rate: float, seconds: float, stream_share: float, pid: int, listen_port: int,
                upstream_port: int, warmup_s: float) -> dict:
    counts = {"ok": 0, "stream_ok": 0, "errors": 0}
    error_kinds: dict[str, int] = {}
    samples: list[dict] = []
    rng = random.Random(7)
    # the load generator's pool: unbounded, so a latency spike (more requests in flight at once) opens more
    # keep-alive connections to the gateway; they are closed when the session closes, after the load
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Authorization": f"Bearer {key}"}
    start = time.perf_counter()

    def sample(phase: str, show: bool) -> dict:
        s = {"t": round(time.perf_counter() - start, 1), "phase": phase, "rss_kib": rss_kib(pid),
             **classify_fds(pid, listen_port, upstream_port)}
        samples.append(s)
        if show:
            print(row(s), file=sys.stderr, flush=True)
        return s

    async def one(stream: bool) -> None:
        try:
            async with session.post(url, json={**BODY, "stream": stream}) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}: {error_message(body)}")
                if stream and b"data: [DONE]" not in body:
                    raise RuntimeError("stream without [DONE]")
            counts["stream_ok" if stream else "ok"] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted and named
            counts["errors"] += 1
            kind = str(exc)[:80] or type(exc).__name__
            error_kinds[kind] = error_kinds.get(kind, 0) + 1

    async def sampler() -> None:
        print(header(), file=sys.stderr, flush=True)
        i = 0
        while True:
            t = i * SAMPLE_EVERY_S
            sample("load", show=t % 60 == 0 or abs(t - warmup_s) < SAMPLE_EVERY_S / 2)  # each minute, warm-up end
            i += 1
            await asyncio.sleep(max(0.0, start + i * SAMPLE_EVERY_S - time.perf_counter()))

    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as session:
        start = time.perf_counter()
        watch = asyncio.create_task(sampler())
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
        sample("end of load", show=True)  # the client's keep-alive connections still open, idle
    # the session closed its connections (the transports close on the next loop turns): the gateway's side of
    # each should go at once, its upstream pool within its keep-alive, and nothing else should have moved
    await asyncio.sleep(1.0)
    sample("closed +1s", show=True)
    await asyncio.sleep(COOLDOWN_S - 1.0)
    sample(f"closed +{COOLDOWN_S:g}s", show=True)
    return {"requests": n, **counts, "error_kinds": error_kinds, "achieved_rps": round(n / elapsed, 1),
            "samples": samples}


def verdict(result: dict, warmup_s: float) -> dict:
    samples = result["samples"]
    load = [s for s in samples if s["phase"] == "load"]
    base = next((s for s in load if s["t"] >= warmup_s), load[0])
    end_of_load = next(s for s in samples if s["phase"] == "end of load")
    after = samples[-1]
    growth = (end_of_load["rss_kib"] - base["rss_kib"]) / max(1, base["rss_kib"])
    stable_growth = max(stable_fds(end_of_load), stable_fds(after)) - stable_fds(base)
    return {
        "zero_errors": result["errors"] == 0,
        "rss_growth_pct": round(100 * growth, 2),
        "rss_flat": growth <= 0.05,
        "fd_growth": end_of_load["fds"] - base["fds"],  # all fds, client sockets included: for information
        "stable_fd_growth": stable_growth,
        # fds other than client and upstream sockets (files, pipes, Postgres, Redis, ...) from minute 1 to the
        # end of the load and to after the cool-down
        "stable_fds_flat": stable_growth <= STABLE_FD_BOUND,
        "redis_max": max(s["redis"] for s in samples),
        "redis_bounded": max(s["redis"] for s in samples) <= REDIS_BOUND,
        "inbound_after": after["inbound"],
        "upstream_after": after["upstream"],
        # the load generator closed its connections and the keep-alives ran out: the gateway holds no socket of
        # a finished exchange (none left behind in CLOSE_WAIT, no upstream connection kept past its keep-alive)
        "sockets_drained": after["inbound"] <= DRAINED_BOUND and after["upstream"] <= DRAINED_BOUND,
        "new_files": sorted(set(after["files"]) - set(base["files"])),
        # per kind, minute 1 -> end of load -> after the cool-down: which kind moved
        "by_kind": {k: [base[k], end_of_load[k], after[k]] for k in FD_CLASSES
                    if not base[k] == end_of_load[k] == after[k]},
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
    warmup_s = min(60.0, seconds / 2)
    try:
        result = asyncio.run(drive(gw.url + "/v1/chat/completions", key, args.rate, seconds, args.stream_share,
                                   gw.proc.pid, gw.port, up_port, warmup_s))
    finally:
        gw.stop()
        upstream.terminate()
    verify = cli(env, "audit", "verify", check=False)
    v = verdict(result, warmup_s)
    v["audit_verified"] = verify.returncode == 0
    if dbname:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    print(f"\nSoak: {args.minutes:g} min at {args.rate:g} req/s, {args.stream_share:.0%} streaming ({args.mode})")
    print("gateway fds by kind (stbl: all but inbound and upstream sockets; in-CW: inbound in CLOSE_WAIT)")
    print(header())
    for s in result["samples"]:
        print(row(s))
    print(f"requests {result['requests']}  ok {result['ok']}  streams ok {result['stream_ok']}  "
          f"errors {result['errors']}  achieved {result['achieved_rps']}/s")
    checks = ("zero_errors", "rss_flat", "stable_fds_flat", "redis_bounded", "sockets_drained", "audit_verified")
    for name in checks:
        print(f"  {name:16} {'PASS' if v[name] else 'FAIL'}")
    print(f"  rss growth {v['rss_growth_pct']} % (<= 5); Redis sockets at most {v['redis_max']} (<= {REDIS_BOUND}); "
          f"fds other than client/upstream/Redis sockets "
          f"{v['stable_fd_growth']:+d} from minute 1 to the end (<= +{STABLE_FD_BOUND}); after the client closed "
          f"and {COOLDOWN_S:g} s: inbound {v['inbound_after']}, upstream {v['upstream_after']} "
          f"(<= {DRAINED_BOUND} each); all fds {v['fd_growth']:+d} at the end of load (client pool, for information)")
    print("  fds that moved, minute 1 -> end of load -> after the cool-down: "
          + (", ".join(f"{k} {' -> '.join(map(str, x))}" for k, x in v["by_kind"].items()) or "none"))
    if v["new_files"]:
        print(f"  files open at the end and not at minute 1: {v['new_files']}")
    if not v["audit_verified"]:
        print(verify.stdout[-2000:] + verify.stderr[-2000:])
    ok = all(v[k] for k in checks)
    samples = [{k: x for k, x in s.items() if k != "files"} for s in result["samples"]]
    print(json.dumps({"bench": "soak", "minutes": args.minutes, "rate": args.rate, "mode": args.mode,
                      "pass": ok, **v, **{k: result[k] for k in ("requests", "ok", "stream_ok", "errors",
                                                                   "error_kinds", "achieved_rps")},
                      "samples": samples}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

"""The larger fuzzing run: the whole OpenAPI surface, every kind of principal, both modes, all phases.

    python -m bench.fuzz_surface [--examples 50] [--modes embedded,production] [--phases ...]

Same principals and exclusions as tests/integration/test_fuzz_openapi.py (tests/support/fuzzing.py), with the
coverage phase on and many more examples. Prints a table (operations exercised, failures, seconds per run) and
one JSON line; exit status 1 when any run found a failure (a 5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from tests.support.fake_upstreams import serve_fake
from tests.support.fuzzing import CREDENTIAL_CHECKS, KINDS, fuzz, make_principal
from tests.support.server import GatewayProcess, base_env, cli
from tests.support.tiny_model import make_tiny_model

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def run_mode(mode: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    models = tmp / f"{mode}-models.yaml"
    extra: dict[str, str] = {}
    dbname = None
    upstream = serve_fake("ok", "openai").__enter__()
    if mode == "embedded":
        model_dir = make_tiny_model(tmp / "tiny")
        models.write_text(f"models:\n  - alias: tiny\n    backend: embedded\n    model: {model_dir}\n")
    else:
        import psycopg

        dbname = f"palisade_fuzz_{secrets.token_hex(3)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{dbname}"')
        extra = {"PALISADE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{dbname}",
                 "PALISADE_REDIS_URL": "redis://127.0.0.1:6379/6"}
        models.write_text(f"models:\n  - alias: mock\n    backend: openai\n    url: {upstream.url}\n"
                          f"    upstream_model: fake-model\n")
    env = base_env(tmp / f"{mode}-data", PALISADE_MODELS_FILE=str(models), PALISADE_DEFAULT_MAX_TOKENS="2",
                   PALISADE_MAX_TOKENS_CAP="8", PALISADE_LIMIT_REQUESTS_PER_MIN="1000000",
                   PALISADE_LIMIT_TOKENS_PER_MIN="100000000", PALISADE_LIMIT_CONCURRENCY="1000",
                   PALISADE_LOGIN_SLOWDOWN_AFTER="1000000", **extra)
    if mode == "production":
        cli(env, "migrate")
    gw = GatewayProcess(env, tmp / f"{mode}-gw.log").start()
    rows = []
    try:
        for kind in KINDS:
            who = make_principal(gw, env, kind)
            for only in ((), CREDENTIAL_CHECKS) if kind in ("admin", "ml_engineer", "approver") else ((),):
                t0 = time.perf_counter()
                r = fuzz(gw, who, tmp / "st" / mode / kind, examples=args.examples, phases=args.phases,
                         only=only, timeout=3600)
                rows.append({"mode": mode, "principal": kind + (" (credential checks)" if only else ""),
                             "operations": r.operations, "failures": r.failures, "returncode": r.returncode,
                             "seconds": round(time.perf_counter() - t0, 1)})
                print(f"{mode:11}{rows[-1]['principal']:36}{r.operations:6d}{len(r.failures):9d}"
                      f"{rows[-1]['seconds']:9.0f}", flush=True)
        rows.append({"mode": mode, "gateway_alive": gw.alive(), "traceback_in_log": "Traceback" in gw.log()})
    finally:
        gw.stop()
        upstream.stop()
        if dbname:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=50)
    ap.add_argument("--modes", default="embedded,production")
    ap.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="palisade-fuzz-"))
    print(f"{'mode':11}{'principal':36}{'ops':>6}{'failures':>9}{'seconds':>9}")
    rows = [row for mode in args.modes.split(",") for row in run_mode(mode, args, tmp)]
    ok = all(not r.get("failures") and r.get("returncode", 0) == 0 and r.get("gateway_alive", True)
             and not r.get("traceback_in_log") for r in rows)
    print(json.dumps({"bench": "fuzz_surface", "examples": args.examples, "phases": args.phases, "pass": ok,
                      "runs": rows}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

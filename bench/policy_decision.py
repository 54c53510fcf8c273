"""Policy decision latency: Palisade's decision point (attribute-tuple cache, invalidated by policy version)
versus plain pycasbin ``enforce`` on the same ABAC model and the same 10,000 policy rows.

Run: ``python -m bench.policy_decision [--rows 10000]``
"""

from __future__ import annotations

import argparse
import statistics
import time

from gateway.authn.principal import Principal
from gateway.authz.attributes import environment, resource_of, subject_of
from gateway.authz.document import parse
from gateway.authz.enforcer import DEFAULT_POLICY_PATH, CasbinAuthorizer, build_enforcer


def policy_text(rows: int) -> str:
    base = DEFAULT_POLICY_PATH.read_text()
    extra = rows - len(parse(base))
    lines = [
        f"p, team{i % 500}:resource{i}:read, \"r.sub.department == 'dept{i}'\", "
        f"\"r.obj.owner == 'team{i % 97}'\", True, allow, synthetic-{i}"
        for i in range(extra)
    ]
    # the synthetic rows come first, so a real request has to get past all of them
    return "\n".join(lines) + "\n" + base


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=20_000, help="cached decisions to time")
    ap.add_argument("--plain-n", type=int, default=20, help="plain pycasbin enforce calls to time")
    args = ap.parse_args()

    text = policy_text(args.rows)
    rules = parse(text)
    principal = Principal(
        "key:bench", "app", "bench", "api_key", roles=("app",), attributes={"department": "x"}
    )
    resource = {"model": "chat", "classification": "internal"}
    env = environment("internal")

    authorizer = CasbinAuthorizer()
    t0 = time.perf_counter()
    authorizer.load(text, 1)
    load_s = time.perf_counter() - t0

    miss = []
    for i in range(5):  # cold decisions (a new attribute tuple each time)
        p = Principal(f"key:cold{i}", "app", "c", "api_key", roles=("app",))
        t = time.perf_counter()
        authorizer.decide_now(p, "inference:model:invoke", resource, env)
        miss.append(time.perf_counter() - t)

    assert authorizer.decide_now(principal, "inference:model:invoke", resource, env).allowed
    cached = []
    for _ in range(args.n):
        t = time.perf_counter_ns()
        authorizer.decide_now(principal, "inference:model:invoke", resource, env)
        cached.append((time.perf_counter_ns() - t) / 1000)

    plain = build_enforcer(rules, cached=False)  # stock casbin.Enforcer, same model, same rows
    sub, obj = subject_of(principal), resource_of(resource)
    assert plain.enforce(sub, obj, "inference:model:invoke", env)
    plain_us = []
    for _ in range(args.plain_n):
        t = time.perf_counter_ns()
        plain.enforce(sub, obj, "inference:model:invoke", env)
        plain_us.append((time.perf_counter_ns() - t) / 1000)

    p50_cached, p99_cached = statistics.median(cached), percentile(cached, 99)
    p50_plain = statistics.median(plain_us)
    print(f"policy rows: {len(rules)}   load: {load_s * 1000:.0f} ms")
    print(f"{'':28}{'p50 (us)':>14}{'p99 (us)':>14}")
    print(f"{'palisade decide (cached)':28}{p50_cached:14.1f}{p99_cached:14.1f}")
    print(f"{'palisade decide (cold)':28}{statistics.median(miss) * 1e6:14.0f}{'':>14}")
    print(f"{'plain pycasbin enforce':28}{p50_plain:14.0f}{max(plain_us):14.0f}")
    print(
        f"speed-up at p50: {p50_plain / p50_cached:,.0f}x   target p50 <= 50 us: "
        f"{'met' if p50_cached <= 50 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()

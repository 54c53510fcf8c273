"""Policy decision latency at 10,000 rows: cache hits, cache misses through the rule index, and the same misses
through a full pycasbin enforce (what a miss cost before the index), side by side in one run.

Shapes of the extra rows (``--shape``):
  distinct  each synthetic row has its own action (``teamN:resourceN:read``): the index skips them by action;
  keyed     every synthetic row is ``inference:model:*`` with ``r.sub.department == 'deptN'`` first: the index
            skips them by the literal their first test needs;
  ranged    every synthetic row is ``inference:model:*`` with ``r.sub.clearance_level > N`` first: the index
            finds the rows whose threshold the subject passes by bisection (here: none of them, every
            threshold is above every clearance level);
  attrfirst every synthetic row is ``inference:model:*`` starting with ``r.obj.owner == r.sub.id`` (attribute
            against attribute), then ``r.sub.department == 'deptN'``: the first test cannot raise, so the index
            files the row by the second;
  unkeyed   every synthetic row is ``inference:model:*`` with ``r.sub.department == 'deptN' or r.obj.owner ==
            r.sub.id`` (a disjunction: nothing any request must match): the index must evaluate all of them;
            the worst case, reported as it is.

Misses are timed with a fresh attribute tuple each (a new subject id), over the default policy's people and apps
and the synthetic rows' own actions. ``--equivalence N`` also compares the index with pycasbin on N random
requests over random policies (tests/support/policy_fuzz.py) and stops on the first difference.

Run: ``python -m bench.policy_decision [--rows 10000] [--shape distinct] [--equivalence 100000] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from datetime import UTC, datetime

from gateway.authn.principal import Principal
from gateway.authz.attributes import environment, resource_of, subject_of
from gateway.authz.document import parse
from gateway.authz.enforcer import DEFAULT_POLICY_PATH, CasbinAuthorizer, build_enforcer, pycasbin_decision
from gateway.authz.index import PolicyIndex


def synthetic_row(i: int, shape: str) -> str:
    if shape == "keyed":
        return f"p, inference:model:*, \"r.sub.department == 'dept{i}'\", True, True, allow, synthetic-{i}"
    if shape == "ranged":
        return f'p, inference:model:*, "r.sub.clearance_level > {i + 3}", True, True, allow, synthetic-{i}'
    if shape == "attrfirst":
        return (
            f"p, inference:model:*, \"r.obj.owner == r.sub.id and r.sub.department == 'dept{i}'\", True, True, "
            f"allow, synthetic-{i}"
        )
    if shape == "unkeyed":
        return (
            f"p, inference:model:*, \"r.sub.department == 'dept{i}' or r.obj.owner == r.sub.id\", True, True, "
            f"allow, synthetic-{i}"
        )
    return (
        f"p, team{i % 500}:resource{i}:read, \"r.sub.department == 'dept{i}'\", "
        f"\"r.obj.owner == 'team{i % 97}'\", True, allow, synthetic-{i}"
    )


def policy_text(rows: int, shape: str = "distinct") -> str:
    base = DEFAULT_POLICY_PATH.read_text()
    extra = rows - len(parse(base))
    # the synthetic rows come first, so a real request has to get past all of them
    return "\n".join(synthetic_row(i, shape) for i in range(extra)) + "\n" + base


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 2 else max(samples)


def miss_requests(n: int, rows: int) -> list[tuple[Principal, str, dict]]:
    """n requests, each with a subject id never seen before: every one is a cache miss."""
    now = datetime.now(UTC)
    rng = random.Random(7)
    people = [
        ("app", "api_key", ("app",), "inference:model:invoke"),
        ("app", "api_key", ("app",), "inference:model:list"),
        ("user", "session", ("admin",), "admin:policy:write"),
        ("user", "session", ("ml_engineer",), "inference:model:invoke"),
        ("user", "session", ("viewer",), "inference:model:invoke"),
        ("user", "session", ("compliance_officer",), "audit:log:read"),
        ("user", "session", ("ml_engineer",), None),  # a synthetic row's own action
    ]
    out = []
    for i in range(n):
        kind, method, roles, action = people[i % len(people)]
        j = rng.randrange(max(rows, 1))
        action = action or f"team{j % 500}:resource{j}:read"
        attrs = {"department": f"dept{rng.randrange(max(rows, 1))}", "clearance": "confidential"}
        p = Principal(f"{kind}:miss{i}", kind, "m", method, roles=roles, attributes=attrs, mfa_at=now)
        out.append((p, action, {"model": "chat", "classification": "internal", "owner": f"team{j % 97}"}))
    return out


def equivalence(n: int, seed: int = 1) -> dict:
    """Index vs pycasbin on n random requests over random policies; raises on the first difference."""
    from tests.support import policy_fuzz

    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    done = 0
    t0 = time.perf_counter()
    while done < n:
        rules = policy_fuzz.policy(rng, rng.randint(5, 60))
        reference = build_enforcer(rules)  # pycasbin (expressions memoised by text: same answers, faster)
        index = PolicyIndex.build(reference, rules)
        assert index is not None
        for _ in range(min(250, n - done)):
            sub, obj, act, env = policy_fuzz.request(rng)
            want = pycasbin_decision(reference, rules, sub, obj, act, env)
            got = index.decide(sub, obj, act, env)
            if got != want:
                raise AssertionError(f"index {got} != pycasbin {want} for {act!r} {sub} {obj} {env}")
            kind = want[1].split(":")[0]
            outcomes[kind] = outcomes.get(kind, 0) + 1
            done += 1
    return {"requests": done, "identical": done, "outcomes": outcomes, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--shape", choices=("distinct", "keyed", "ranged", "attrfirst", "unkeyed"), default="distinct")
    ap.add_argument("--n", type=int, default=20_000, help="cached decisions to time")
    ap.add_argument("--misses", type=int, default=2_000, help="cache misses through the index to time")
    ap.add_argument("--plain-n", type=int, default=14, help="the same misses through a full pycasbin enforce")
    ap.add_argument("--equivalence", type=int, default=0, help="random requests to compare with pycasbin")
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.misses, args.plain_n = 2_000, 300, 3
    logging.disable(logging.CRITICAL)  # evaluation errors are logged; not part of the timing

    text = policy_text(args.rows, args.shape)
    rules = parse(text)
    env = environment("internal")
    authorizer = CasbinAuthorizer()
    t0 = time.perf_counter()
    authorizer.load(text, 1)
    load_s = time.perf_counter() - t0
    assert authorizer._index is not None

    requests = miss_requests(args.misses, args.rows)
    miss_us = []
    for p, action, resource in requests:
        t = time.perf_counter_ns()
        authorizer.decide_now(p, action, resource, env)
        miss_us.append((time.perf_counter_ns() - t) / 1000)

    hot = Principal("key:bench", "app", "bench", "api_key", roles=("app",), attributes={"department": "x"})
    resource = {"model": "chat", "classification": "internal"}
    assert authorizer.decide_now(hot, "inference:model:invoke", resource, env).allowed
    hit_us = []
    for _ in range(args.n):
        t = time.perf_counter_ns()
        authorizer.decide_now(hot, "inference:model:invoke", resource, env)
        hit_us.append((time.perf_counter_ns() - t) / 1000)

    plain = build_enforcer(rules, cached=False)  # stock casbin.Enforcer, same model, same rows
    plain_us, agree = [], 0
    for p, action, res in requests[: args.plain_n]:
        sub, obj = subject_of(p), resource_of(res)
        t = time.perf_counter_ns()
        want = pycasbin_decision(plain, rules, sub, obj, action, env)
        plain_us.append((time.perf_counter_ns() - t) / 1000)
        agree += want == authorizer._index.decide(sub, obj, action, env)

    rows = [
        ("decide, cache hit", hit_us),
        ("decide, miss (rule index)", miss_us),
        ("miss via full pycasbin enforce", plain_us),
    ]
    print(f"policy rows: {len(rules)} ({args.shape})   load: {load_s * 1000:.0f} ms   compiled rows: "
          f"{authorizer._index.compiled}")
    print(f"{'':34}{'n':>7}{'p50 (us)':>12}{'p99 (us)':>12}")
    for label, xs in rows:
        print(f"{label:34}{len(xs):7}{statistics.median(xs):12.1f}{percentile(xs, 99):12.1f}")
    miss_p99, hit_p50 = percentile(miss_us, 99), statistics.median(hit_us)
    speedup = statistics.median(plain_us) / statistics.median(miss_us)
    print(
        f"miss p50 speed-up vs pycasbin: {speedup:,.0f}x   miss p99 <= 1 ms: {'met' if miss_p99 <= 1000 else 'MISSED'}"
        f"   hit p50 <= 50 us: {'met' if hit_p50 <= 50 else 'MISSED'}   same answers: {agree}/{len(plain_us)}"
    )
    result = {
        "bench": "policy_decision",
        "rows": len(rules),
        "shape": args.shape,
        "load_ms": round(load_s * 1000),
        "hit_p50_us": round(hit_p50, 1),
        "hit_p99_us": round(percentile(hit_us, 99), 1),
        "miss_p50_us": round(statistics.median(miss_us), 1),
        "miss_p99_us": round(miss_p99, 1),
        "pycasbin_miss_p50_us": round(statistics.median(plain_us)),
        "pycasbin_miss_p99_us": round(percentile(plain_us, 99)),
        "pycasbin_agree": f"{agree}/{len(plain_us)}",
    }
    if args.equivalence:
        eq = equivalence(args.equivalence)
        print(f"equivalence: {eq['identical']}/{eq['requests']} identical to pycasbin in {eq['seconds']:.0f} s; "
              f"outcomes {eq['outcomes']}")
        result["equivalence"] = eq
    print(json.dumps(result))


if __name__ == "__main__":
    main()

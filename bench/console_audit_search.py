"""Console audit search on a large trail (real Postgres): one page (50 rows) of each filter, first page and a
deep page, with the original single-column indexes versus the (column, at, seq) indexes of migration 0010.

The query is the console's own (``gateway.console.audit_query.search_query``). Rows are synthetic, inserted
with ``generate_series`` into a scratch database that is dropped afterwards (the append-only trigger of the real
schema is not created there).

Run: ``python -m bench.console_audit_search [--rows 10000000]`` (``--quick``: 300,000 rows)
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import MetaData, create_engine, text

from gateway.audit.export import ExportFilters
from gateway.console.audit_query import search_query
from gateway.console.paging import encode_cursor
from gateway.db.audit import AuditRecord
from tests.conftest import PG_ADMIN_URL

OLD = [f"CREATE INDEX ix_old_{c} ON audit_records ({c})" for c in ("at", "actor", "tag", "model", "decision")]
NEW = ["CREATE INDEX ix_new_at_seq ON audit_records (at, seq)"] + [
    f"CREATE INDEX ix_new_{c} ON audit_records ({c}, at, seq)" for c in ("actor", "tag", "model", "decision")
]
END = datetime(2026, 1, 1, tzinfo=UTC)


def fill(conn: psycopg.Connection, rows: int) -> None:
    """~1 record per 10 ms; 500 actors (one of them rare), 3 models, tags and decisions skewed like real traffic."""
    conn.execute(f"""
        INSERT INTO audit_records (seq, at, tag, actor, target, model, decision, request_id, details, prev_hash, hash)
        SELECT g,
               timestamptz '{END.isoformat()}' - ({rows} - g) * interval '10 milliseconds',
               CASE WHEN g % 50 = 0 THEN 'authz:decision:deny' WHEN g % 1000 = 1 THEN 'admin:key:create'
                    ELSE 'inference:request:complete' END,
               CASE WHEN g % 100000 = 7 THEN 'user:rare' ELSE 'key:' || (g % 499) END,
               'mock',
               (ARRAY['chat', 'code', 'embed'])[1 + g % 3],
               CASE WHEN g % 50 = 0 THEN 'dec_' || g ELSE 'allow' END,
               md5(g::text), '{{}}', md5((g - 1)::text), md5(g::text)
        FROM generate_series(1, {rows}) AS g""")
    conn.execute("ANALYZE audit_records")


CASES = {
    "no filter": ExportFilters(),
    "busy actor": ExportFilters(actor="key:17"),
    "rare actor": ExportFilters(actor="user:rare"),
    "action (tag)": ExportFilters(action="authz:decision:deny"),
    "model": ExportFilters(model="code"),
    "decision": ExportFilters(decision="allow"),
    "last hour": ExportFilters(since=END - timedelta(hours=1)),
    "a day last month": ExportFilters(since=END - timedelta(days=30), until=END - timedelta(days=29)),
    "actor + a day": ExportFilters(actor="key:17", since=END - timedelta(days=1)),
}


def time_case(engine, filters: ExportFilters, deep: bool, repeat: int) -> tuple[float, int]:  # noqa: ANN001
    cursor = None
    if deep:  # a cursor half-way through the trail's time span: what page 10,000 would send
        with engine.connect() as c:
            mid = c.execute(text("SELECT at, seq FROM audit_records WHERE seq = (SELECT max(seq) / 2 FROM "
                                 "audit_records)")).one()
        cursor = encode_cursor([mid.at, mid.seq])
    q = search_query(filters, cursor)
    samples, n = [], 0
    with engine.connect() as c:
        for _ in range(repeat):
            t = time.perf_counter()
            n = len(c.execute(q).all())
            samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000, n


def run(url: str, ddl: list[str], repeat: int) -> dict[str, tuple[float, float]]:
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in ddl:
            conn.execute(stmt)
        conn.execute("ANALYZE audit_records")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    out = {}
    try:
        for name, f in CASES.items():
            out[name] = (time_case(engine, f, False, repeat)[0], time_case(engine, f, True, repeat)[0])
    finally:
        engine.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        for stmt in ddl:
            conn.execute("DROP INDEX " + stmt.split()[2])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--quick", action="store_true", help="300,000 rows")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = 300_000 if args.quick else args.rows
    name = f"palisade_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        bare = AuditRecord.__table__.to_metadata(MetaData())
        for index in list(bare.indexes):
            bare.indexes.discard(index)
        bare.create(engine)
        engine.dispose()
        t0 = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            fill(conn, rows)
        fill_s = time.perf_counter() - t0
        old = run(url, OLD, args.repeat)
        new = run(url, NEW, args.repeat)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"console audit search, {rows:,} records (filled in {fill_s:.1f}s), median of {args.repeat}, ms per page")
    print(f"{'filter':<18} {'first: old':>11} {'new':>8} {'deep: old':>10} {'new':>8} {'ratio':>7}")
    worst_new = 0.0
    for case in CASES:
        (o1, o2), (n1, n2) = old[case], new[case]
        worst_new = max(worst_new, n1, n2)
        ratio = max(o1, o2) / max(n1, n2, 1e-6)
        print(f"{case:<18} {o1:>11.2f} {n1:>8.2f} {o2:>10.2f} {n2:>8.2f} {ratio:>6.1f}x")
    print(json.dumps({"bench": "console_audit_search", "rows": rows, "worst_page_ms_new": round(worst_new, 2),
                      "worst_page_ms_old": round(max(max(v) for v in old.values()), 2),
                      "cases": {k: {"old": [round(x, 2) for x in old[k]], "new": [round(x, 2) for x in new[k]]}
                                for k in CASES}}))


if __name__ == "__main__":
    main()

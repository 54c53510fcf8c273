"""The change feed's periodic check reads one row per domain and re-reads the policy, limits and registry tables
only when a counter moved; a write by another process is still picked up by the poll alone (no pub/sub)."""

from __future__ import annotations

import asyncio
import re
import time

import psycopg
import pytest
from sqlalchemy import event

from gateway.db.migrate import upgrade
from gateway.runtime import open_services
from gateway.settings import Settings
from tests.support.server import base_env, cli

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="session")]

#: the tables the watchers re-read (policy, limits, registry)
WATCHED = re.compile(r"\b(policy_versions|limit_rules|runtime_options|usage_baselines|aliases|model_versions|models)\b")
INTERVAL = 0.2


@pytest.fixture(scope="module")
def env(pg_url, tmp_path_factory):
    # Postgres without Redis: no pub/sub at all, only the periodic check carries changes between processes
    env = base_env(tmp_path_factory.mktemp("feed"), PALISADE_DATABASE_URL=pg_url,
                   PALISADE_POLICY_CHECK_INTERVAL_S=str(INTERVAL))
    upgrade(Settings.from_env(env))
    return env


@pytest.fixture
async def services(env):
    async with open_services(Settings.from_env(env)) as services:
        yield services


def _counting(services) -> tuple[list[str], object]:
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany) -> None:
        seen.append(statement)

    event.listen(services.db.engine.sync_engine, "before_cursor_execute", record)
    return seen, record


async def _until(predicate, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not converged within {within}s")


async def test_idle_polls_read_only_the_counters_and_keep_the_policy_fresh(services) -> None:
    await asyncio.sleep(INTERVAL * 3)  # settled: the first start seeded the default policy (a counted change)
    seen, record = _counting(services)
    try:
        await asyncio.sleep(INTERVAL * 6)
    finally:
        event.remove(services.db.engine.sync_engine, "before_cursor_execute", record)
    counters = [s for s in seen if "change_versions" in s]
    assert len(counters) >= 3, seen  # the poll ran
    assert not [s for s in seen if WATCHED.search(s)], seen  # and re-read nothing
    assert time.monotonic() - services.authz.decider.checked_at < 1.0  # an unchanged counter is a fresh check


async def test_a_cli_write_is_picked_up_by_the_poll_alone(services, env) -> None:
    assert services.redis is None and ("principal", "*") not in services.limits_config.snapshot.rules
    seen, record = _counting(services)
    try:
        # another process (the CLI) writes; it cannot publish anything (no Redis)
        await asyncio.to_thread(cli, env, "limits", "set", "principal", "*", "--rpm", "7")
        took = await _until(lambda: ("principal", "*") in services.limits_config.snapshot.rules, within=2.0)
    finally:
        event.remove(services.db.engine.sync_engine, "before_cursor_execute", record)
    assert services.limits_config.snapshot.rules[("principal", "*")]["requests_per_min"] == 7
    assert took <= 2.0
    # only the domain that moved was re-read
    assert [s for s in seen if "limit_rules" in s]
    assert not [s for s in seen if "policy_versions" in s or "FROM aliases" in s]


async def test_a_direct_sql_write_that_bumps_the_counter_is_picked_up(services, env) -> None:
    with psycopg.connect(env["PALISADE_DATABASE_URL"]) as conn:  # one transaction: the write and its count
        conn.execute("INSERT INTO runtime_options (key, value, updated_by, updated_at) "
                     "VALUES ('anomaly.factor', '{\"value\": 9.5}', 'sql', now()) "
                     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
        conn.execute("UPDATE change_versions SET version = version + 1 WHERE domain = 'limits'")
    await _until(lambda: services.limits_config.option("anomaly.factor") == 9.5, within=2.0)


async def test_every_writer_counts_its_change(services) -> None:
    """The admin paths (API, CLI and console all call these) bump their domain in the write's transaction."""
    from gateway.authz.enforcer import DEFAULT_POLICY_PATH
    from gateway.db.changes import read_versions
    from gateway.limits.config import LimitsAdmin
    from gateway.models.service import system_context
    from gateway.models.spec import parse_spec

    async def moved(domain: str, write) -> None:
        before = (await read_versions(services.db))[domain]
        await write()
        assert (await read_versions(services.db))[domain] == before + 1, domain

    admin = LimitsAdmin(services.db)
    await moved("limits", lambda: admin.set_rule("model", "m", {"concurrency": 3}, "t"))
    await moved("limits", lambda: admin.delete_rule("model", "m"))
    await moved("limits", lambda: admin.set_option("anomaly.min_requests", 40, "t"))
    await moved("limits", lambda: admin.set_suspended("user:x", "test"))
    await moved("limits", lambda: admin.set_suspended("user:x", None))
    text = DEFAULT_POLICY_PATH.read_text()
    await moved("policy", lambda: services.policy_store.apply(text + "\n# touched\n", actor="t", reason="test"))
    await moved("policy", lambda: services.policy_store.rollback(1, actor="t", reason="test"))
    registry = services.models.registry
    for port in (9, 10):  # a new alias, then a changed models-file entry: each flips the alias
        spec = parse_spec({"alias": "feed-test", "backend": "openai", "url": f"http://127.0.0.1:{port}/v1"})
        await moved("models", lambda spec=spec: registry.seed([spec]))
    await moved("models", lambda: registry.rollback(system_context("t"), "feed-test"))

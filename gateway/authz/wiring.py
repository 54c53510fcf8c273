"""Start and stop the authorization and limits machinery of one gateway process (called by build_services).

Policy: the versioned store (seeded from policies/policy.csv on first start) feeds the Casbin decision point.
Limits: admin rules over settings defaults feed the limiter (Redis Lua, or in memory in embedded mode).
Both are refreshed by the change feed (Redis pub/sub + a periodic version check).
"""

from __future__ import annotations

import time
from typing import Any

from gateway.authz.attributes import Networks
from gateway.authz.enforcer import CasbinAuthorizer
from gateway.authz.store import PolicyStore
from gateway.authz.sync import ChangeFeed
from gateway.limits.anomaly import UsageWatch
from gateway.limits.config import LimitsConfig
from gateway.limits.limiter import RateLimiter
from gateway.limits.shedding import LoadShedder
from gateway.settings import Settings


def build_authorizer(settings: Settings) -> CasbinAuthorizer:
    # stale after many missed checks: a replica that cannot see policy changes must stop deciding
    stale = max(10.0, settings.policy_check_interval_s * 15)
    return CasbinAuthorizer(networks=Networks(settings.trusted_networks), stale_after_s=stale)


async def start_authorization_and_limits(services: Any) -> None:
    settings: Settings = services.settings
    authorizer: CasbinAuthorizer = services.authorizer
    store = PolicyStore(services.db)
    config = LimitsConfig(settings, services.db)
    feed = ChangeFeed(services.redis, interval_s=settings.policy_check_interval_s)
    services.policy_store, services.limits_config, services.change_feed = store, config, feed

    async def refresh_policy() -> None:
        started = time.monotonic()
        latest = await store.latest_version()
        if latest == 0:
            await store.seed_default()
            latest = await store.latest_version()
        if latest != authorizer.version:
            row = await store.current()
            if row is not None:
                authorizer.load(row.text, row.version)
        authorizer.checked_at = started

    feed.watch("policy", refresh_policy)
    feed.watch("limits", config.refresh)
    services.usage_watch = UsageWatch(services)
    services.limiter = RateLimiter(
        config,
        redis=services.redis,
        shedder=LoadShedder(services.router, settings.shed_low_priority_at),
        lease_s=max(60.0, settings.request_timeout_s + 60),
        watch=services.usage_watch,
    )
    await feed.start()
    await services.usage_watch.start()


async def stop_authorization_and_limits(services: Any) -> None:
    if services.usage_watch is not None:
        await services.usage_watch.close()
    if services.change_feed is not None:
        await services.change_feed.close()
